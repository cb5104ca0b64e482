/// Counts heap bytes, so that `igpo bench` reports the CPU backend's peak
/// memory exactly (see `backend::cpu::CountingAllocator`).
#[global_allocator]
static ALLOCATOR: igpo::backend::cpu::CountingAllocator = igpo::backend::cpu::CountingAllocator;

fn main() {
    igpo::backend::cpu::keep_freed_memory();
    std::process::exit(igpo::cli::main())
}
