//! Entry point of the `mtt` binary: hands argv to [`mtt::cmd::main`] and exits with its code.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(mtt::cmd::main(std::env::args_os().collect()));
}
