use clap::Parser;

fn main() {
    // A monitor lives as long as its agent, one per agent: it skips building
    // the whole command line's parser, whose heap and stack pages it would
    // otherwise keep dirty for its life.
    let args: Vec<std::ffi::OsString> = std::env::args_os().take(4).collect();
    if let [_, word, dir] = args.as_slice() {
        if word == "monitor" {
            std::process::exit(corral::cli::commands::run_monitor(std::path::Path::new(dir)));
        }
    }
    let cli = match corral::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => std::process::exit(corral::cli::commands::parse_error(err)),
    };
    std::process::exit(corral::cli::commands::run(cli));
}
