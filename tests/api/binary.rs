//! The built `cartstream` binary, run as an operator would: a server started on a random
//! port ([`start_binary`]), a command run to its exit ([`run`]), a server stopped with SIGTERM
//! ([`stop`]). Each starts from the same environment: no configuration file unless given, the
//! caller's variables last.

use serde_json::Value;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A server started by [`start_binary`], killed when dropped.
pub(crate) struct Process {
    pub child: tokio::process::Child,
    pub url: String,
}

/// The binary on a random port without a configuration file, with `defaults`, then `envs`
/// (which win).
fn command(defaults: &[(&str, &str)], envs: &[(&str, String)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cartstream"));
    cmd.env("CARTSTREAM_LISTEN", "127.0.0.1:0")
        .env_remove("CARTSTREAM_CONFIG")
        .kill_on_drop(true);
    for (k, v) in defaults {
        cmd.env(k, v);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Starts the server with `envs` (logging JSON at info unless they say otherwise) and waits
/// until it listens.
pub(crate) async fn start_binary(envs: &[(&str, String)]) -> Process {
    let defaults = [
        ("CARTSTREAM_LOG", "info"),
        ("CARTSTREAM_LOG_FORMAT", "json"),
    ];
    let mut cmd = command(&defaults, envs);
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("the cartstream binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["fields"]["message"] == "cartstream listening" {
                return v["fields"]["addr"].as_str().unwrap().to_owned();
            }
        }
        panic!("the binary exited before listening");
    })
    .await
    .expect("the binary listens in time");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Process {
        child,
        url: format!("http://{addr}"),
    }
}

/// Runs the binary with `args` on `envs` (logging at warn unless they say otherwise) until it
/// exits, within 120 s; returns its output and what it said (stdout then stderr), also
/// printed for a failing test's log.
pub(crate) async fn run(args: &[&str], envs: &[(&str, String)]) -> (Output, String) {
    run_within(args, envs, Duration::from_secs(120)).await
}

/// [`run`] with its own time limit.
pub(crate) async fn run_within(
    args: &[&str],
    envs: &[(&str, String)],
    within: Duration,
) -> (Output, String) {
    let mut cmd = command(&[("CARTSTREAM_LOG", "warn")], envs);
    cmd.args(args);
    let out = tokio::time::timeout(within, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("cartstream {args:?} exits within {within:?}"))
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("--- cartstream {args:?} ({}):\n{said}", out.status);
    (out, said)
}

/// Stops the server with SIGTERM, so it shuts down cleanly (its WAL written back), and checks
/// it exits 0 within 60 s.
pub(crate) async fn stop(mut server: Process) {
    let pid = server.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), server.child.wait())
        .await
        .expect("the server stops in time")
        .unwrap();
    assert!(exit.success(), "{exit}");
}
