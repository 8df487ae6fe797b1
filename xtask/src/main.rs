//! `cargo run -p xtask -- assets DIR`: writes seatgate's man pages
//! (DIR/man/seatgate.1, one page per subcommand) and shell completions
//! (DIR/completions/: bash, zsh, fish), made from the command definitions.
//! scripts/install.sh installs them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [task, dir] if task == "assets" => match assets(Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: cargo run -p xtask -- assets DIR");
            ExitCode::from(2)
        }
    }
}

fn assets(dir: &Path) -> std::io::Result<()> {
    let cmd = seatgate::cli::command();
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    write_pages(&cmd, "seatgate", "seatgate", &man)?;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    use clap_complete::Shell;
    for (shell, name) in [
        (Shell::Bash, "seatgate"),
        (Shell::Zsh, "_seatgate"),
        (Shell::Fish, "seatgate.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "seatgate", &mut out);
        std::fs::write(completions.join(name), out)?;
    }
    eprintln!("wrote {} and {}", man.display(), completions.display());
    Ok(())
}

/// seatgate.1, seatgate-status.1, seatgate-bundle-sign.1, ...
fn write_pages(cmd: &clap::Command, name: &str, words: &str, dir: &Path) -> std::io::Result<()> {
    let mut out = Vec::new();
    // The page names `seatgate bundle sign`, not just `sign`.
    let page = cmd
        .clone()
        .display_name(name.to_string())
        .bin_name(words.to_string());
    clap_mangen::Man::new(page)
        .title(name.to_string())
        .render(&mut out)?;
    let path: PathBuf = dir.join(format!("{name}.1"));
    std::fs::write(path, out)?;
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let sub_name = sub.get_name();
        write_pages(
            sub,
            &format!("{name}-{sub_name}"),
            &format!("{words} {sub_name}"),
            dir,
        )?;
    }
    Ok(())
}
