use clap::Parser;

/// The request path allocates many small, short-lived buffers (headers, query
/// pairs); mimalloc's thread-local free lists serve them faster than glibc malloc
/// (benches/serve.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = media_store::cli::Cli::parse();
    let code = match media_store::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("media-store: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
