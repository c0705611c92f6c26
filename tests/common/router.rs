//! Hosts in network namespaces of their own, all linked to one router namespace, so
//! that a test can partition them: a blackhole rule in the router drops A→B silently,
//! and a connection times out as across a real partition. Removed on drop, veth pairs
//! included. Needs root.

use std::process::Command;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Router {
    /// The router's namespace.
    pub router: String,
    /// (host name, namespace, address) of each host.
    pub hosts: Vec<(String, String, String)>,
    /// Partition rules in force, to remove on heal.
    cuts: Vec<(String, String)>,
}

impl Router {
    /// One namespace per host on `10.<x>.<i>.2/24`, the router on `.1` of each, where
    /// `x` comes from the test process so that concurrent test binaries do not clash.
    pub fn new(hosts: &[&str]) -> Router {
        let pid = std::process::id();
        let tag = format!("{}", pid % 100_000);
        let x = 20 + pid % 200;
        let router = format!("pwr{tag}");
        let mut r = Router {
            router: router.clone(),
            hosts: Vec::new(),
            cuts: Vec::new(),
        };
        ip(&["netns", "add", &router]);
        ip(&["-n", &router, "link", "set", "lo", "up"]);
        let forward = Command::new("ip")
            .args([
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .expect("run sysctl");
        assert!(forward.success(), "cannot turn on forwarding in {router}");
        for (i, name) in hosts.iter().enumerate() {
            let i = i + 1;
            let ns = format!("pwh{tag}{i}");
            let (rv, hv) = (format!("pw{tag}r{i}"), format!("pw{tag}h{i}"));
            let addr = format!("10.{x}.{i}.2");
            r.hosts.push((name.to_string(), ns.clone(), addr.clone()));
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["link", "add", &rv, "type", "veth", "peer", "name", &hv]);
            ip(&["link", "set", &rv, "netns", &router]);
            ip(&["link", "set", &hv, "netns", &ns]);
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("10.{x}.{i}.1/24"),
                "dev",
                &rv,
            ]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &hv]);
            ip(&["-n", &router, "link", "set", &rv, "up"]);
            ip(&["-n", &ns, "link", "set", &hv, "up"]);
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.{x}.{i}.1"),
            ]);
        }
        r
    }

    fn host(&self, name: &str) -> &(String, String, String) {
        self.hosts
            .iter()
            .find(|h| h.0 == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// The namespace of `name`.
    pub fn ns(&self, name: &str) -> String {
        self.host(name).1.clone()
    }

    /// The address of `name`.
    pub fn addr(&self, name: &str) -> String {
        self.host(name).2.clone()
    }

    /// The network every host is in, for pg_hba.
    pub fn network(&self) -> String {
        let a = self.addr(&self.hosts[0].0);
        let parts: Vec<&str> = a.split('.').collect();
        format!("{}.{}.0.0/16", parts[0], parts[1])
    }

    /// Drops every packet between `a` and `b`, both ways.
    pub fn cut(&mut self, a: &str, b: &str) {
        let (fa, fb) = (self.addr(a), self.addr(b));
        for (from, to) in [(&fa, &fb), (&fb, &fa)] {
            ip(&[
                "-n",
                &self.router,
                "rule",
                "add",
                "from",
                from,
                "to",
                to,
                "blackhole",
            ]);
            self.cuts.push((from.clone(), to.clone()));
        }
    }

    /// Cuts `a` off from every other host.
    pub fn isolate(&mut self, a: &str) {
        let others: Vec<String> = self
            .hosts
            .iter()
            .map(|h| h.0.clone())
            .filter(|h| h != a)
            .collect();
        for b in others {
            self.cut(a, &b);
        }
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.cuts) {
            ip(&[
                "-n",
                &self.router,
                "rule",
                "del",
                "from",
                &from,
                "to",
                &to,
                "blackhole",
            ]);
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        for (_, ns, _) in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.router])
            .status();
    }
}
