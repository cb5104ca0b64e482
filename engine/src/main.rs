fn main() {
    std::process::exit(igpo::cli::main())
}
