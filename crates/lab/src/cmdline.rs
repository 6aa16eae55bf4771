//! A command as text, for the messages of the modules that run programs ([`crate::sys`] for
//! commands run to completion, [`crate::process`] for daemons).

use std::process::Command;

/// The command line, for messages.
pub fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_quotes_nothing_but_joins() {
        let mut c = Command::new("ip");
        c.args(["-n", "x", "link"]);
        assert_eq!(show(&c), "ip -n x link");
    }
}
