use clap::Parser;

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
