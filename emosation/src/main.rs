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
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(emosation::cli::run(cli))
}
