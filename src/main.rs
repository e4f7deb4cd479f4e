fn main() -> std::process::ExitCode {
    qubs_bridge::cli::main()
}
