//! The `twill` binary. Started with `CNI_COMMAND` set, it is the CNI plugin of
//! `"type": "twill"`; otherwise it is the command-line tool.

use std::io::Read;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "twill", version, about = "Container networking for Linux")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the CNI spec versions this plugin speaks.
    CniVersions,
}

fn main() {
    if std::env::var_os("CNI_COMMAND").is_some() {
        let mut stdin = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut stdin);
        let stdout = std::io::stdout();
        let code = twill_cni::run(|k| std::env::var(k).ok(), &stdin, &mut stdout.lock());
        std::process::exit(code);
    }
    let cli = Cli::parse();
    match cli.command {
        Cmd::CniVersions => println!("{}", twill_cni::spec::SUPPORTED_VERSIONS.join(" ")),
    }
}
