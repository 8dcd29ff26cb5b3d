//! `emosation`: see `emosation --help`.

use clap::Parser;

// Allocation-heavy paths (decoding, folding, JSON) run markedly faster on mimalloc.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = emosation::cli::Cli::parse();
    emosation::cli::init_tracing(cli.log_format);
    emosation::process::private_files();
    if !cli.transparent_huge_pages
        && let Err(e) = emosation::process::disable_transparent_huge_pages()
    {
        tracing::warn!("could not opt out of transparent huge pages: {e}");
    }
    // Tasks woken from other threads — an append's completion from the log
    // writer, a decision from the projector's thread: the acknowledgement
    // path — wait in the runtime's shared queue, which a worker looks at
    // only every so many polls of its own queue (the sockets woken by its
    // I/O). Every 4th poll instead: `small_rooms` ack p99 at 4,000 msg/s
    // 46–50 ms against 53 ms, nothing else changed (bench/README.md,
    // "sixth session").
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .global_queue_interval(4)
        .enable_all()
        .build()?;
    runtime.block_on(emosation::cli::run(cli))
}
