//! # A private network of namespaces, and partitions in it
//!
//! [`Network::create`] builds, for one test run:
//!
//! ```text
//!   test process (root namespace)           switch namespace             node namespaces
//!   veth cw<pid><tag>h 10.213.X.254/24 ──── bridge br0 ──┬── veth ── eth0 10.213.X.1/24  (node 0)
//!                                                        ├── veth ── eth0 10.213.X.2/24  (node 1)
//!                                                        └── …
//! ```
//!
//! X is chosen per run (from the process id and the test's tag) among the /24s of
//! 10.213.0.0/16 that no interface or route of the machine mentions, so the addresses exist
//! only on the test's interfaces. The bridge lives in a namespace of its own, not in the root
//! one, so the machine's own firewall (bridged traffic passes it when `br_netfilter` is
//! loaded) never sees the test's traffic. A node runs inside its namespace
//! (`ip netns exec`, see [`super::Process::in_namespace`]) and listens on its 10.213.X.i
//! address; the test's clients reach every node through the bridge.
//!
//! **Partitions** are nftables rules inside the node namespaces: a node drops every packet
//! that *arrives* from a node on another side ([`Network::partition`]), in both directions
//! since every node has the rule. Dropping on input only (never on output) makes a cut look
//! like a real one to the sender: its SYNs and segments vanish and its calls time out, rather
//! than failing at once with EPERM as a locally refused send would. The client's address is
//! never dropped. [`Network::heal`] deletes the rules.
//!
//! Namespaces are deleted when the [`Network`] is dropped (also when the test panics), which
//! destroys their interfaces; processes must be killed before (declare the processes after
//! the network, so they drop first). Namespaces a killed test run left behind (named after a
//! process that no longer exists) are deleted by the next run.
//!
//! Where `ip netns add` is refused (not root, no `ip`) or nftables is missing, [`Network::create`]
//! says the test is skipped and returns `None`, unless `CARTWHEEL_REQUIRE_NETNS=1` (CI sets it
//! where it can create a namespace), where it fails the test.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The nftables table the partitions live in.
const TABLE: &str = "cartwheel_partition";

/// Prefix of every namespace and link this module creates.
const PREFIX: &str = "cw";

/// One test run's network: a switch namespace with a bridge, one namespace per node, a link
/// from the test process to the bridge.
pub struct Network {
    /// `cw<pid><tag>`: every name starts with it.
    name: String,
    /// X of 10.213.X.0/24.
    subnet: u8,
    nodes: usize,
    /// Node namespaces that hold partition rules now.
    cut: std::cell::RefCell<Vec<usize>>,
}

impl Network {
    /// Build the network for `nodes` nodes (at most 200); `tag` (one letter) tells apart
    /// the networks of tests that run in the same process. `None` if this machine does not
    /// allow it (see the module docs).
    pub fn create(tag: char, nodes: usize) -> Option<Network> {
        assert!(nodes <= 200 && tag.is_ascii_lowercase());
        remove_abandoned();
        let name = format!("{PREFIX}{}{tag}", std::process::id());
        if let Err(reason) = run("ip", &["netns", "add", &format!("{name}s")]) {
            return skip(&format!("cannot create a network namespace: {reason}"));
        }
        let mut network = Network { name, subnet: 0, nodes: 0, cut: Default::default() };
        if let Err(reason) = network.exec_in(&network.switch(), "nft", &["list", "tables"]) {
            return skip(&format!("nftables does not work here: {reason}"));
        }
        network.subnet = free_subnet(tag);
        network.build(nodes).unwrap_or_else(|e| panic!("building the test network: {e}"));
        Some(network)
    }

    fn switch(&self) -> String {
        format!("{}s", self.name)
    }

    /// The namespace of node `i`.
    pub fn namespace(&self, i: usize) -> String {
        format!("{}n{i}", self.name)
    }

    /// The address of node `i`.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, i as u8 + 1)
    }

    /// The test process's address on the network.
    pub fn client_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 254)
    }

    /// The subnet, for the test's printout.
    pub fn subnet(&self) -> String {
        format!("10.213.{}.0/24", self.subnet)
    }

    fn build(&mut self, nodes: usize) -> Result<(), String> {
        let switch = self.switch();
        self.exec_in(&switch, "ip", &["link", "add", "br0", "type", "bridge"])?;
        self.exec_in(&switch, "ip", &["link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let namespace = self.namespace(i);
            run("ip", &["netns", "add", &namespace])?;
            self.nodes = i + 1;
            let (inner, outer) = (format!("{}a{i}", self.name), format!("{}b{i}", self.name));
            run("ip", &["link", "add", &inner, "type", "veth", "peer", "name", &outer])?;
            run("ip", &["link", "set", &inner, "netns", &namespace])?;
            run("ip", &["link", "set", &outer, "netns", &switch])?;
            self.exec_in(&namespace, "ip", &["link", "set", &inner, "name", "eth0"])?;
            let address = format!("{}/24", self.address(i));
            self.exec_in(&namespace, "ip", &["addr", "add", &address, "dev", "eth0"])?;
            self.exec_in(&namespace, "ip", &["link", "set", "eth0", "up"])?;
            self.exec_in(&namespace, "ip", &["link", "set", "lo", "up"])?;
            self.exec_in(&switch, "ip", &["link", "set", &outer, "master", "br0"])?;
            self.exec_in(&switch, "ip", &["link", "set", &outer, "up"])?;
        }
        let (host, outer) = (format!("{}h", self.name), format!("{}hb", self.name));
        run("ip", &["link", "add", &host, "type", "veth", "peer", "name", &outer])?;
        run("ip", &["link", "set", &outer, "netns", &switch])?;
        self.exec_in(&switch, "ip", &["link", "set", &outer, "master", "br0"])?;
        self.exec_in(&switch, "ip", &["link", "set", &outer, "up"])?;
        let address = format!("{}/24", self.client_address());
        run("ip", &["addr", "add", &address, "dev", &host])?;
        run("ip", &["link", "set", &host, "up"])?;
        Ok(())
    }

    /// Cut the network into `sides`: a node drops what arrives from every node on another
    /// side. Nodes on no side are not touched. Replaces any earlier partition.
    pub fn partition(&self, sides: &[&[usize]]) {
        self.heal();
        for (s, side) in sides.iter().enumerate() {
            let others: Vec<String> = sides
                .iter()
                .enumerate()
                .filter(|(o, _)| *o != s)
                .flat_map(|(_, other)| other.iter().map(|&j| self.address(j).to_string()))
                .collect();
            if others.is_empty() {
                continue;
            }
            let rules = format!(
                "table inet {TABLE} {{\n  chain input {{\n    type filter hook input priority 0; \
                 policy accept;\n    ip saddr {{ {} }} drop\n  }}\n}}\n",
                others.join(", ")
            );
            for &i in side.iter() {
                let namespace = self.namespace(i);
                nft_apply(&namespace, &rules)
                    .unwrap_or_else(|e| panic!("nft rules in {namespace}: {e}"));
                self.cut.borrow_mut().push(i);
            }
        }
    }

    /// Remove every partition rule.
    pub fn heal(&self) {
        for i in self.cut.borrow_mut().drain(..) {
            let namespace = self.namespace(i);
            self.exec_in(&namespace, "nft", &["delete", "table", "inet", TABLE])
                .unwrap_or_else(|e| panic!("removing the rules of {namespace}: {e}"));
        }
    }

    /// Run `program args` in `namespace`.
    fn exec_in(&self, namespace: &str, program: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", namespace, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace destroys its interfaces, and a veth dies with its peer.
        for i in 0..self.nodes {
            let _ = run("ip", &["netns", "delete", &self.namespace(i)]);
        }
        let _ = run("ip", &["netns", "delete", &self.switch()]);
        let _ = run("ip", &["link", "delete", &format!("{}h", self.name)]);
    }
}

/// `None`, after saying why, unless `CARTWHEEL_REQUIRE_NETNS=1`.
fn skip(reason: &str) -> Option<Network> {
    let required = std::env::var("CARTWHEEL_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    assert!(!required, "{reason}, and CARTWHEEL_REQUIRE_NETNS=1");
    eprintln!("skipped: {reason} (run as root with iproute2 and nftables to run this test)");
    None
}

/// Load `rules` with `nft -f -` in `namespace`.
fn nft_apply(namespace: &str, rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ip: {e}"))?;
    child.stdin.take().unwrap().write_all(rules.as_bytes()).map_err(|e| e.to_string())?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// Run a command, its stderr as the error.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}`: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The output of a command (empty if it fails).
fn output_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A /24 of 10.213.0.0/16 that no address or route of the root namespace mentions, starting
/// from one picked by the process id and `tag`.
fn free_subnet(tag: char) -> u8 {
    let taken = output_of("ip", &["-4", "-o", "addr", "show"]) + &output_of("ip", &["-4", "route"]);
    let start = (std::process::id() as usize * 7 + tag as usize) % 250;
    (0..250)
        .map(|step| ((start + step) % 250 + 1) as u8)
        .find(|x| !taken.contains(&format!("10.213.{x}.")))
        .expect("a free /24 in 10.213.0.0/16")
}

/// Delete the namespaces of earlier runs whose process is gone (a test killed before its
/// [`Network`] was dropped). Namespaces of running processes are left alone.
fn remove_abandoned() {
    for line in output_of("ip", &["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = digits.parse::<u32>() else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "delete", name]);
        }
    }
}
