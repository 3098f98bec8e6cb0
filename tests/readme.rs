//! The README, run as a new user would: its snippets are taken out of README.md itself, so a
//! change to either side that breaks them fails here.
//!
//! - "Use it": `up` runs in an empty directory (on free ports, never 7401-7403, the node given
//!   by `CARTWHEEL_NODE`), and every command of the section's first block runs as written,
//!   with the exit code and output the comments promise.
//! - "Configuration": the commands that start a node from the example, and the example itself,
//!   run as written (the example's port replaced by a free one).
//!
//! `cargo run --release --` is replaced by this build's binary.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const README: &str = include_str!("../README.md");

/// The fenced blocks of `lang` after the heading line `heading`, up to the next `## `.
fn blocks(heading: &str, lang: &str) -> Vec<String> {
    let start = README.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("{heading}"));
    let section = &README[start + heading.len() + 2..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find(&fence) {
        let body = &rest[open + fence.len()..];
        let close = body.find("```").expect("a closed fence");
        out.push(body[..close].to_string());
        rest = &body[close..];
    }
    out
}

/// The commands of a sh block: comments and continuations resolved, one per entry.
fn commands(block: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut pending = String::new();
    for line in block.lines() {
        let (code, comment) = match line.find(" #") {
            Some(at) => (&line[..at], line[at + 2..].trim()),
            None => (line, ""),
        };
        if code.trim().is_empty() {
            continue;
        }
        if let Some(continued) = code.trim_end().strip_suffix('\\') {
            pending.push_str(continued);
            continue;
        }
        pending.push_str(code);
        out.push((pending.trim().to_string(), comment.to_string()));
        pending.clear();
    }
    out
}

fn binary() -> String {
    common::binary().display().to_string()
}

/// Run `command` (as written, with the binary put in) in `dir`; its exit code and stdout.
fn run(command: &str, dir: &Path, node: &str) -> (i32, String) {
    let command = command.replace("cargo run --release --", &binary());
    let output = Command::new("sh")
        .args(["-c", &command])
        .current_dir(dir)
        .env("CARTWHEEL_NODE", node)
        .env_remove("CARTWHEEL_CREDENTIALS")
        .env_remove("CARTWHEEL_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("$ {command}\n{stdout}{stderr}");
    (output.status.code().unwrap_or(-1), stdout)
}

/// Three consecutive free ports on 127.0.0.1 (for `up`'s three nodes).
fn three_free_ports() -> u16 {
    loop {
        let first = common::free_port();
        if first > 65_000 {
            continue;
        }
        let taken = (1..3).any(|i| std::net::TcpListener::bind(("127.0.0.1", first + i)).is_err());
        if !taken {
            return first;
        }
    }
}

fn wait_listening(address: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "the process exited before listening");
        assert!(Instant::now() < deadline, "nothing listens on {address}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops a process with SIGINT (as Ctrl-C would) when dropped.
struct Interrupt(Child);

impl Drop for Interrupt {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every command of "Use it" against `up`, as the README writes them.
#[test]
fn use_it_commands_run_against_up_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let port = three_free_ports();
    let setup = commands(&blocks("## Set up", "sh")[0]);
    assert_eq!(setup[0].0, "cargo run --release -- up", "the README's first command");
    let up_command =
        format!("{} --port {port}", setup[0].0.replace("cargo run --release --", &binary()));
    let child = Command::new("sh")
        .args(["-c", &format!("exec {up_command}")])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = Interrupt(child);
    let node = format!("127.0.0.1:{port}");
    wait_listening(&format!("127.0.0.1:{}", port + 2), &mut up.0);
    let block = &blocks("## Use it", "sh")[0];
    let lines = commands(block);
    assert!(lines.len() >= 9, "the Use it block has its commands: {lines:?}");
    for (command, comment) in lines {
        let expected_code = if comment.contains("exit code 4") { 4 } else { 0 };
        let mut attempt = 0;
        let (code, stdout) = loop {
            // The cluster may still be forming its ring on the first command.
            let (code, stdout) = run(&command, dir.path(), &node);
            attempt += 1;
            if code == expected_code || attempt == 80 {
                break (code, stdout);
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert_eq!(code, expected_code, "{command}");
        if let Some(printed) = comment.strip_prefix("prints: ") {
            let expected = printed.replace("<TAB>", "\t");
            assert_eq!(stdout.trim_end(), expected, "{command}");
        }
    }
}

/// The steps the Configuration section gives, with its example as node.toml, start a node
/// that takes the example's cart.
#[test]
fn configuration_example_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let steps = commands(&blocks("## Configuration", "sh")[0]);
    let example = &blocks("## Configuration", "toml")[0];
    // The example's own address is a user's `up` port: the test listens elsewhere.
    let at = example.find("listen = \"").expect("the example names its listen address") + 10;
    let address = &example[at..at + example[at..].find('"').unwrap()];
    let example = example.replace(address, &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("node.toml"), example).unwrap();
    let node = format!("127.0.0.1:{port}");
    let mut serving = None;
    for (command, _) in steps {
        if command.contains(" serve ") {
            let command = command.replace("cargo run --release --", &binary());
            let child = Command::new("sh")
                .args(["-c", &format!("exec {command}")])
                .current_dir(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let mut child = Interrupt(child);
            wait_listening(&node, &mut child.0);
            serving = Some(child);
            continue;
        }
        let (code, _) = run(&command, dir.path(), &node);
        assert_eq!(code, 0, "{command}");
    }
    assert!(serving.is_some(), "the steps start a node");
    let (code, stdout) = run("cargo run --release -- cart show alice", dir.path(), &node);
    assert_eq!((code, stdout.as_str()), (0, "apple\t2\n"));
}
