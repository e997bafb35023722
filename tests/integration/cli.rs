//! The command line end to end: `init` writes files `validate` accepts, and every kind of bad
//! cluster file gets a precise message, exit code 2, and leaves nothing behind.

use crate::support::*;

fn base() -> String {
    format!(
        r#"name = "demo"
cloud = "openstack"

[kubernetes]
version = "1.37.1"
sysext_url = "https://mirror.example.org/kubernetes-v1.37.1-x86-64.raw"
sysext_sha256 = "{}"

[control_plane]
flavor = "m3.small"

[[worker_pools]]
name = "default"
count = 2
flavor = "m3.small"
"#,
        "ab".repeat(32)
    )
}

fn with(from: &str, to: &str) -> String {
    let text = base();
    assert!(
        text.contains(from),
        "test case edits a line that is not there: {from}"
    );
    text.replacen(from, to, 1)
}

fn appended(extra: &str) -> String {
    format!("{}\n{extra}\n", base())
}

/// (what is wrong, the file, a fragment the message must contain, the line it must point at)
fn invalid_files() -> Vec<(&'static str, String, &'static str, Option<usize>)> {
    vec![
        (
            "toml syntax",
            with("name = \"demo\"", "name = \"demo"),
            "not valid TOML",
            Some(1),
        ),
        (
            "unknown top-level key",
            with(
                "cloud = \"openstack\"",
                "cloud = \"openstack\"\ncolud = \"x\"",
            ),
            "did you mean `cloud`?",
            Some(3),
        ),
        (
            "misspelt nested key",
            with(
                "flavor = \"m3.small\"\n\n[[",
                "flavour = \"m3.small\"\n\n[[",
            ),
            "unknown key `control_plane.flavour`",
            Some(10),
        ),
        (
            "missing name",
            with("name = \"demo\"\n", ""),
            "missing required key `name`",
            Some(1),
        ),
        (
            "upper-case name",
            with("name = \"demo\"", "name = \"Demo\""),
            "`name` is `Demo`, not a valid name",
            Some(1),
        ),
        (
            "name too long",
            with("name = \"demo\"", &format!("name = \"{}\"", "a".repeat(41))),
            "not a valid name",
            Some(1),
        ),
        (
            "empty cloud",
            with("cloud = \"openstack\"", "cloud = \" \""),
            "`cloud` is empty",
            Some(2),
        ),
        (
            "count of the wrong type",
            with("count = 2", "count = \"two\""),
            "`worker_pools[0].count` must be an integer, not a string",
            Some(14),
        ),
        (
            "two control planes",
            with("[control_plane]\n", "[control_plane]\ncount = 2\n"),
            "it must be 1, 3 or 5",
            Some(10),
        ),
        (
            "an endpoint for one control plane",
            with(
                "[control_plane]\n",
                "[control_plane]\napi_endpoint = \"vip\"\n",
            ),
            "`control_plane.api_endpoint` is `vip` with one control plane",
            Some(10),
        ),
        (
            "negative worker count",
            with("count = 2", "count = -1"),
            "a pool holds 0 to 500 workers",
            Some(14),
        ),
        (
            "too many workers",
            with("count = 2", "count = 501"),
            "a pool holds 0 to 500 workers",
            Some(14),
        ),
        (
            "duplicate pool",
            appended("[[worker_pools]]\nname = \"default\"\ncount = 1\nflavor = \"m3.small\""),
            "two worker pools are named `default`",
            None,
        ),
        (
            "bad pool name",
            with("name = \"default\"", "name = \"Default_1\""),
            "`worker_pools[0].name` is `Default_1`",
            Some(13),
        ),
        (
            "pool without flavor",
            with("count = 2\nflavor = \"m3.small\"", "count = 2"),
            "missing required key `worker_pools[0].flavor`",
            Some(12),
        ),
        (
            "two-part version",
            with("version = \"1.37.1\"", "version = \"1.37\""),
            "not a Kubernetes release MAJOR.MINOR.PATCH",
            Some(5),
        ),
        (
            "old Kubernetes",
            with("version = \"1.37.1\"", "version = \"1.27.3\""),
            "Kubernetes v1.27.3 is not supported",
            Some(5),
        ),
        (
            "short sha256",
            with(&format!("\"{}\"", "ab".repeat(32)), "\"xyz\""),
            "must be 64 hexadecimal digits",
            Some(7),
        ),
        (
            "Kubernetes past its end of life",
            with("version = \"1.37.1\"", "version = \"1.34.2\""),
            "Kubernetes v1.34.2 is not supported",
            Some(5),
        ),
        (
            "Kubernetes newer than flatstack knows",
            with("version = \"1.37.1\"", "version = \"1.38.0\""),
            "supports the minors upstream supports: 1.35, 1.36, 1.37",
            Some(5),
        ),
        (
            "sysext url naming a directory",
            with("kubernetes-v1.37.1-x86-64.raw\"", "\""),
            "names a directory, not an image file",
            Some(6),
        ),
        (
            "ftp url",
            with("https://mirror.example.org/", "ftp://mirror.example.org/"),
            "is not an http(s) URL",
            Some(6),
        ),
        (
            "unknown channel",
            appended("[flatcar]\nchannel = \"stabel\""),
            "unknown Flatcar channel `stabel`",
            Some(18),
        ),
        (
            "bad Flatcar version",
            appended("[flatcar]\nversion = \"latest\""),
            "not a Flatcar release",
            Some(18),
        ),
        (
            "image and version",
            appended("[flatcar]\nversion = \"4230.2.3\"\nimage = \"flatcar\""),
            "both choose the image",
            Some(18),
        ),
        (
            "prefix out of range",
            appended("[network]\nnode_cidr = \"10.42.0.0/33\""),
            "is not a CIDR range",
            Some(18),
        ),
        (
            "host bits",
            appended("[network]\nnode_cidr = \"10.42.0.1/24\""),
            "did you mean 10.42.0.0/24?",
            Some(18),
        ),
        (
            "pods overlap services",
            appended("[network]\npod_cidr = \"10.96.0.0/16\""),
            "overlaps `network.service_cidr`",
            None,
        ),
        (
            "nodes overlap pods",
            appended("[network]\nnode_cidr = \"10.244.1.0/24\""),
            "`network.node_cidr` 10.244.1.0/24 overlaps `network.pod_cidr`",
            None,
        ),
        (
            "node range too small",
            appended("[network]\nnode_cidr = \"10.42.0.0/29\""),
            "has 6 addresses for 3 nodes",
            None,
        ),
        (
            "service range too large",
            appended("[network]\nservice_cidr = \"10.0.0.0/8\""),
            "from /12 (largest) to /28",
            Some(18),
        ),
        (
            "IPv6 pods",
            appended("[network]\npod_cidr = \"fd00::/64\""),
            "`network.pod_cidr` must be an IPv4 range",
            Some(18),
        ),
        (
            "bad DNS server",
            appended("[network]\ndns_servers = [\"8.8.8\"]"),
            "`8.8.8` in `network.dns_servers` is not an IP address",
            Some(18),
        ),
        (
            "subnet without network",
            appended("[network]\nexisting_subnet = \"mine\""),
            "needs `network.existing_network` too",
            Some(18),
        ),
        (
            "bad ssh key",
            appended("[access]\nssh_public_keys = [\"ssh-ed25519 notbase64!\"]"),
            "is not an OpenSSH public key",
            Some(18),
        ),
        (
            "SSH open without keys",
            appended("[access]\nssh_cidrs = [\"0.0.0.0/0\"]"),
            "opens SSH, but no key would let anyone in",
            None,
        ),
        (
            "API CIDR not a range",
            appended("[access]\napi_cidrs = [\"everyone\"]"),
            "`everyone` in `access.api_cidrs` is not a CIDR range",
            Some(18),
        ),
        (
            "reserved label",
            with(
                "count = 2\nflavor = \"m3.small\"\n",
                "count = 2\nflavor = \"m3.small\"\nlabels = { \"node-role.kubernetes.io/worker\" = \"\" }\n",
            ),
            "may not set the label `node-role.kubernetes.io/worker`",
            None,
        ),
        (
            "bad label value",
            with(
                "count = 2\nflavor = \"m3.small\"\n",
                "count = 2\nflavor = \"m3.small\"\nlabels = { \"example.org/tier\" = \"-bad-\" }\n",
            ),
            "is not a valid label value",
            None,
        ),
        (
            "bad taint effect",
            with(
                "count = 2\nflavor = \"m3.small\"\n",
                "count = 2\nflavor = \"m3.small\"\ntaints = [\"k=v:Sometimes\"]\n",
            ),
            "has the unknown effect `Sometimes`",
            None,
        ),
        (
            "bad reboot day",
            appended("[updates]\nreboot_days = [\"funday\"]"),
            "`funday` is not a day",
            Some(18),
        ),
        (
            "bad reboot time",
            appended("[updates]\nreboot_start = \"25:00\""),
            "`25:00` is not a time of day",
            Some(18),
        ),
        (
            "update server not a URL",
            appended("[updates]\nserver = \"nebraska\""),
            "`nebraska` is not an http(s) URL",
            Some(18),
        ),
        (
            "unknown ingress exposure",
            appended("[ingress]\nexposure = \"nodeport\""),
            "`ingress.exposure` `nodeport` is not known",
            Some(18),
        ),
        (
            "hostname without ACME contact",
            appended("[ingress]\nhostname = \"hub.example.org\""),
            "`ingress.hostname` is set but `ingress.acme_email` is not",
            Some(18),
        ),
        (
            "hostname too long for Let's Encrypt",
            appended(&format!(
                "[ingress]\nhostname = \"{}.projects.jetstream-cloud.org\"\nacme_email = \"a@example.org\"",
                "a".repeat(40)
            )),
            "Let's Encrypt issues only for names of at most 64 characters",
            Some(18),
        ),
        (
            "hostname with a scheme",
            appended(
                "[ingress]\nhostname = \"https://hub.example.org\"\nacme_email = \"a@example.org\"",
            ),
            "is not a DNS name",
            Some(18),
        ),
        (
            "unknown authenticator",
            appended("[jupyterhub]\nauthenticator = \"ldap\""),
            "`jupyterhub.authenticator` `ldap` is not known",
            Some(18),
        ),
        (
            "GitHub without a client ID",
            appended("[jupyterhub]\nauthenticator = \"github\""),
            "needs `github_client_id`",
            None,
        ),
        (
            "GitHub without a hostname",
            appended("[jupyterhub]\nauthenticator = \"github\"\ngithub_client_id = \"Iv1.x\""),
            "needs `ingress.hostname`",
            None,
        ),
        (
            "hub in an add-on's namespace",
            appended("[jupyterhub]\nnamespace = \"traefik\""),
            "namespace `traefik` belongs to the cluster or its add-ons",
            Some(18),
        ),
        (
            "load balancer without cloud controller",
            appended(
                "[addons]\ncloud_controller = false\ncinder_csi = false\n[ingress]\nexposure = \"load-balancer\"",
            ),
            "needs `addons.cloud_controller`",
            None,
        ),
        (
            "CSI without cloud controller",
            appended("[addons]\ncloud_controller = false"),
            "`addons.cinder_csi` needs `addons.cloud_controller`",
            None,
        ),
        (
            "tiny boot volume",
            with("[control_plane]\n", "[control_plane]\nboot_volume_gb = 5\n"),
            "a boot volume holds 10 to 16384 GB",
            Some(10),
        ),
        (
            "no control plane table",
            with("[control_plane]\nflavor = \"m3.small\"\n", ""),
            "missing required key `control_plane`",
            None,
        ),
        (
            "kubernetes not a table",
            with(
                "[kubernetes]\n",
                "kubernetes = \"1.33\"\n[kubernetes_extra]\n",
            ),
            "`kubernetes` must be a table, not a string",
            Some(4),
        ),
        (
            "empty file",
            String::new(),
            "missing required key `name`",
            Some(1),
        ),
        (
            "node range in loopback",
            appended("[network]\nnode_cidr = \"127.0.0.0/24\""),
            "`network.node_cidr` 127.0.0.0/24 lies in loopback",
            None,
        ),
        (
            "pod range in link-local space",
            appended("[network]\npod_cidr = \"169.254.0.0/16\""),
            "`network.pod_cidr` 169.254.0.0/16 lies in link-local space",
            None,
        ),
        (
            "node range in multicast",
            appended("[network]\nnode_cidr = \"224.1.0.0/24\""),
            "lies in multicast",
            None,
        ),
        (
            "a DNS server twice",
            appended("[network]\ndns_servers = [\"8.8.8.8\", \"8.8.8.8\"]"),
            "`8.8.8.8` is listed twice in `network.dns_servers`",
            None,
        ),
        (
            "more nodes than a cluster takes",
            appended(
                "[network]\nnode_cidr = \"10.0.0.0/16\"\npod_cidr = \"10.128.0.0/9\"\n\
                 [[worker_pools]]\nname = \"a\"\ncount = 500\nflavor = \"m3.small\"\n\
                 [[worker_pools]]\nname = \"b\"\ncount = 500\nflavor = \"m3.small\"\n",
            ),
            "the cluster has 1003 nodes; flatstack makes clusters of at most 1000",
            None,
        ),
    ]
}

/// Files that are not regular files are refused at once: a FIFO would hang the read, a device
/// would never end it; an oversized file is refused before it is parsed.
#[test]
fn special_and_oversized_cluster_files_are_refused() {
    let workspace = Workspace::new();
    let fifo = workspace.path("fifo.toml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let huge = workspace.path("huge.toml");
    std::fs::write(&huge, format!("name = \"{}\"\n", "a".repeat(2 << 20))).expect("write");
    for (file, fragment) in [
        (fifo.to_str().expect("path"), "not a regular file"),
        ("/dev/zero", "not a regular file"),
        (huge.to_str().expect("path"), "larger than 1024 KiB"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_flatstack"))
            .args(["--file", file, "validate"])
            .output()
            .expect("run flatstack");
        assert_eq!(output.status.code(), Some(2), "{file}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(fragment),
            "{file}: {}",
            stderr(&output)
        );
    }
}

/// Arguments out of range are refused by the parser, before anything runs.
#[test]
fn bad_durations_and_endpoints_are_refused() {
    let workspace = Workspace::new();
    workspace.write_cluster(&base());
    for timeout in ["0s", "25h", "99999999999999999h", "5d", "-1m"] {
        let output = workspace.flatstack(&["up", "--timeout", timeout]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{timeout}: {}",
            stderr(&output)
        );
    }
    let output = workspace.render(&["--internal-endpoint", "192.168.1.10"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(
            "--internal-endpoint 192.168.1.10 is not in `network.node_cidr` 10.42.0.0/24"
        ),
        "{}",
        stderr(&output)
    );
    assert!(!workspace.out_dir().exists());
}

#[test]
fn every_invalid_file_is_explained_with_exit_code_2_and_nothing_written() {
    let cases = invalid_files();
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for (what, text, fragment, line) in cases {
        if let Err(why) = check_invalid(&text, fragment, line) {
            failures.push(format!("{what}: {why}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn check_invalid(text: &str, fragment: &str, line: Option<usize>) -> Result<(), String> {
    let workspace = Workspace::new();
    workspace.write_cluster(text);
    let output = workspace.render(&[]);
    let message = stderr(&output);
    let file = workspace.cluster_file().display().to_string();
    let fail = |why: &str| Err(format!("{why}\n{message}"));
    if output.status.code() != Some(2) {
        return fail(&format!("exit code {:?}", output.status.code()));
    }
    if !message.contains(fragment) {
        return fail(&format!("wanted `{fragment}`"));
    }
    if !message.starts_with(&format!("{file}:")) {
        return fail("no position");
    }
    if let Some(line) = line {
        // Each problem is its `file:line:column: error:` line and the hint line below it.
        let located = message
            .split(&format!("\n{file}:"))
            .map(|block| block.trim_start_matches(&format!("{file}:")))
            .any(|block| block.starts_with(&format!("{line}:")) && block.contains(fragment));
        if !located {
            return fail(&format!("wanted it on line {line}"));
        }
    }
    if !message.contains("hint: ") || message.contains("panicked") {
        return fail("no hint, or a panic");
    }
    if workspace.state_dir().exists()
        || workspace.out_dir().exists()
        || workspace.path("xdg").exists()
    {
        return fail("something was written");
    }
    Ok(())
}

#[test]
fn all_problems_are_reported_at_once() {
    let workspace = Workspace::new();
    let text = with("name = \"demo\"", "name = \"Demo\"").replace("count = 2", "count = \"two\"")
        + "\n[network]\npod_cidr = \"10.96.0.0/16\"\n";
    workspace.write_cluster(&text);
    let output = workspace.flatstack(&["validate"]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(message.matches(": error: ").count(), 3, "{message}");
    assert!(message.contains("3 problems in"), "{message}");
}

#[test]
fn a_valid_file_validates() {
    let workspace = Workspace::new();
    workspace.write_cluster(&base());
    let out = success(&workspace.flatstack(&["validate"]));
    assert!(
        out.contains("cluster `demo` is valid: 3 node(s), Kubernetes v1.37.1"),
        "{out}"
    );
}

/// A reader that went away (`flatstack validate | head -0`) loses the output, not the run:
/// no panic, the exit code the command earned.
#[test]
fn output_into_a_closed_pipe_is_dropped_without_a_panic() {
    let workspace = Workspace::new();
    workspace.write_cluster(&base());
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flatstack"))
        .current_dir(workspace.path("."))
        .env_remove("FLATSTACK_FILE")
        .arg("--file")
        .arg(workspace.cluster_file())
        .arg("validate")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run flatstack");
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn missing_file_is_an_input_error() {
    let workspace = Workspace::new();
    let output = workspace.flatstack(&["validate"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("run `flatstack init`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn init_writes_files_that_validate_for_every_profile() {
    for profile in ["jetstream2", "generic"] {
        let workspace = Workspace::new();
        let out = success(&workspace.flatstack(&["init", "--profile", profile, "--name", "lab"]));
        assert!(out.contains("for cluster `lab`"), "{out}");
        let text = std::fs::read_to_string(workspace.cluster_file()).expect("written");
        assert!(text.contains("name = \"lab\""));
        let valid = success(&workspace.flatstack(&["validate"]));
        assert!(
            valid.contains("cluster `lab` is valid: 3 node(s)"),
            "{profile}: {valid}"
        );
    }
}

#[test]
fn jetstream2_profile_uses_its_flavors_and_network() {
    let workspace = Workspace::new();
    success(&workspace.flatstack(&["init", "--name", "lab"]));
    let text = std::fs::read_to_string(workspace.cluster_file()).expect("written");
    assert!(text.contains("flavor = \"m3.small\""));
    assert!(text.contains("external_network = \"public\""));
    assert!(text.contains("auto_allocated_network"));
    assert!(
        text.contains("[backup]") && text.contains("\nenabled = true "),
        "Jetstream2 has Swift: backups on\n{text}"
    );
}

#[test]
fn init_never_overwrites_without_force() {
    let workspace = Workspace::new();
    workspace.write_cluster("# mine\n");
    let output = workspace.flatstack(&["init", "--name", "lab"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("exists already"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read_to_string(workspace.cluster_file()).expect("kept"),
        "# mine\n"
    );
    success(&workspace.flatstack(&["init", "--name", "lab", "--force"]));
    assert!(
        std::fs::read_to_string(workspace.cluster_file())
            .expect("new")
            .contains("name = \"lab\"")
    );
}

#[test]
fn init_refuses_an_invalid_name() {
    let workspace = Workspace::new();
    let output = workspace.flatstack(&["init", "--name", "My_Cluster"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("`My_Cluster` cannot name a cluster"),
        "{}",
        stderr(&output)
    );
    assert!(!workspace.cluster_file().exists());
}

#[test]
fn reusing_a_network_needs_the_internal_endpoint() {
    let workspace = Workspace::new();
    workspace.write_cluster(&appended(
        "[network]\nexisting_network = \"auto_allocated_network\"",
    ));
    let output = workspace.render(&[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--internal-endpoint"),
        "{}",
        stderr(&output)
    );
    assert!(!workspace.state_dir().exists());
    let out = success(&workspace.render(&["--internal-endpoint", "10.1.2.3"]));
    assert!(out.contains("join endpoint 10.1.2.3:6443"), "{out}");
}

/// A syntactically valid ed25519 public key line with random key bytes.
fn random_ssh_key(n: usize) -> String {
    use base64::Engine as _;
    let kind = b"ssh-ed25519";
    let mut blob = Vec::new();
    blob.extend_from_slice(&(kind.len() as u32).to_be_bytes());
    blob.extend_from_slice(kind);
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend((0..32).map(|i| (i * 31 + n * 17) as u8));
    format!(
        "ssh-ed25519 {} user{n}@example",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

#[test]
fn oversized_user_data_names_the_node_and_its_size() {
    let keys: Vec<String> = (0..700)
        .map(|n| format!("\"{}\"", random_ssh_key(n)))
        .collect();
    let workspace = Workspace::new();
    workspace.write_cluster(&appended(&format!(
        "[access]\nssh_public_keys = [{}]",
        keys.join(", ")
    )));
    success(&workspace.flatstack(&["validate"]));
    let output = workspace.render(&[]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains("the Ignition config of demo-control-plane-1 is"),
        "{message}"
    );
    assert!(message.contains("Nova accepts at most 65535"), "{message}");
    assert!(!workspace.out_dir().exists());
}

#[test]
fn init_without_the_publisher_proposes_the_newest_supported_minor() {
    let workspace = Workspace::new();
    // Nothing listens there: init says so and proposes flatstack's own choice.
    let out = success(&workspace.flatstack(&[
        "init",
        "--name",
        "lab",
        "--sysext-mirror",
        "http://127.0.0.1:9/extensions",
    ]));
    assert!(
        out.contains("could not ask http://127.0.0.1:9/extensions"),
        "{out}"
    );
    assert!(out.contains("proposing Kubernetes v1.37.1"), "{out}");
    let text = std::fs::read_to_string(workspace.cluster_file()).expect("written");
    assert!(text.contains("version = \"1.37.1\""), "{text}");
    assert!(
        text.contains(
            "sysext_url = \"http://127.0.0.1:9/extensions/kubernetes-v1.37.1-x86-64.raw\""
        ),
        "{text}"
    );
    let out = success(&workspace.flatstack(&["validate"]));
    assert!(out.contains("Kubernetes v1.37.1"), "{out}");
}
