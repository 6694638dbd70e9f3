//! store-node binary: see `cli` for the subcommands (`serve`, `gateway`, `archive`, ...).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
