use clap::Parser;

fn main() {
    let cli = corral::cli::Cli::parse();
    std::process::exit(corral::commands::run(cli));
}
