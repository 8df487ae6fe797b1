use std::process::ExitCode;

fn main() -> ExitCode {
    seatgate::cli::main()
}
