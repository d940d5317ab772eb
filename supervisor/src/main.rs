use clap::Parser;

fn main() {
    let cli = match corral::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => std::process::exit(corral::cli::commands::parse_error(err)),
    };
    std::process::exit(corral::cli::commands::run(cli));
}
