//! Helpers for tests that run the real `ledgerd` binary.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A scratch directory with its own store, and a way to run ledgerd there.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store_url(&self) -> String {
        format!("sqlite://{}", self.db().display())
    }

    pub fn db(&self) -> PathBuf {
        self.path().join("ledgerd.db")
    }

    /// `ledgerd ARGS` in the scratch directory, with no LEDGERD_* from outside.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ledgerd"));
        cmd.args(args).current_dir(self.path()).env_remove("RUST_LOG");
        for (key, _) in std::env::vars() {
            if key.starts_with("LEDGERD_") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// Runs `ledgerd ARGS` with `stdin`, returning its output.
    pub fn run(&self, args: &[&str], stdin: &str) -> Output {
        self.run_with(self.cmd(args), stdin)
    }

    pub fn run_with(&self, mut cmd: Command, stdin: &str) -> Output {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ledgerd");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("ledgerd output")
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON lines of stdout.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// `hash -> units` from `ledgerd balances`.
pub fn balances(s: &Scratch) -> std::collections::BTreeMap<String, u64> {
    let out = s.run(&["balances"], "");
    assert!(out.status.success(), "balances: {}", stderr(&out));
    json_lines(&out)
        .into_iter()
        .map(|v| {
            (
                v["hash"].as_str().expect("hash").to_string(),
                v["units"].as_u64().expect("units"),
            )
        })
        .collect()
}
