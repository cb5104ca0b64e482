/// Counts heap bytes, so that `igpo bench` reports the CPU backend's peak
/// memory exactly (see `backend::cpu::CountingAllocator`).
#[global_allocator]
static ALLOCATOR: igpo::backend::cpu::CountingAllocator = igpo::backend::cpu::CountingAllocator;

fn main() {
    igpo::backend::cpu::keep_freed_memory();
    // Under mpirun / srun: join the job first; leave it (MPI_Finalize)
    // before exiting, as every rank must.
    let membership = match igpo::dist::init() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2)
        }
    };
    let code = igpo::cli::main();
    membership.leave();
    std::process::exit(code)
}
