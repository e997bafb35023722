//! The local PKI checked with independent tools: openssl for chains and the discovery hash,
//! kubectl for the kubeconfig; and the state directory's permissions and reuse.

use std::process::Command;

use crate::support::*;

fn rendered_workspace() -> Workspace {
    let workspace = Workspace::new();
    workspace.write_cluster(&cluster_text(
        "https://mirror.example.org/ext",
        &"ab".repeat(32),
        2,
    ));
    success(&workspace.render(&["--endpoint", "203.0.113.7"]));
    workspace
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write as _;
    require_tool("openssl");
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or_default())
        .expect("write stdin");
    drop(input);
    let output = child.wait_with_output().expect("openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn discovery_hash_matches_openssl() {
    let workspace = rendered_workspace();
    let ca = workspace.state_dir().join("pki/ca.crt");
    let ca = ca.to_str().expect("path");
    // kubeadm's recipe: the DER SubjectPublicKeyInfo of the CA, hashed with SHA-256.
    let public_pem = openssl(&["x509", "-pubkey", "-noout", "-in", ca], None);
    let der = openssl(&["pkey", "-pubin", "-outform", "DER"], Some(&public_pem));
    let expected = format!("sha256:{}", sha256_hex(&der));

    let config = read_json(&workspace.out_dir().join("demo-default-1.ign"));
    let kubeadm = ignition_file(&config, "/etc/flatstack/kubeadm.yaml.in").expect("kubeadm config");
    let kubeadm = String::from_utf8(kubeadm).expect("utf-8");
    assert!(kubeadm.contains(&expected), "{expected} not in\n{kubeadm}");
}

#[test]
fn admin_certificates_verify_against_the_cluster_ca() {
    let workspace = rendered_workspace();
    let pki = workspace.state_dir().join("pki");
    let ca = pki.join("ca.crt");
    for (cert, group) in [
        ("admin.crt", "kubeadm:cluster-admins"),
        ("super-admin.crt", "system:masters"),
    ] {
        let path = pki.join(cert);
        let verified = openssl(
            &[
                "verify",
                "-CAfile",
                ca.to_str().expect("path"),
                path.to_str().expect("path"),
            ],
            None,
        );
        assert!(String::from_utf8_lossy(&verified).contains(": OK"));
        let subject = openssl(
            &[
                "x509",
                "-noout",
                "-subject",
                "-ext",
                "extendedKeyUsage",
                "-in",
                path.to_str().expect("path"),
            ],
            None,
        );
        let subject = String::from_utf8_lossy(&subject).into_owned();
        assert!(subject.contains(&format!("O = {group}")), "{subject}");
        assert!(
            subject.contains("TLS Web Client Authentication"),
            "{subject}"
        );
    }
    // The CAs are CAs, and kubeadm will find them under the names it expects.
    for ca in ["ca.crt", "front-proxy-ca.crt", "etcd-ca.crt"] {
        let text = openssl(
            &[
                "x509",
                "-noout",
                "-text",
                "-in",
                pki.join(ca).to_str().expect("path"),
            ],
            None,
        );
        assert!(String::from_utf8_lossy(&text).contains("CA:TRUE"), "{ca}");
    }
}

#[test]
fn kubeconfig_is_read_by_kubectl() {
    require_tool("kubectl");
    let workspace = rendered_workspace();
    let kubeconfig = workspace.out_dir().join("kubeconfig");
    assert_eq!(mode_of(&kubeconfig), 0o600);
    let view = Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args(["config", "view", "--raw", "-o", "json"])
        .output()
        .expect("run kubectl");
    assert!(
        view.status.success(),
        "{}",
        String::from_utf8_lossy(&view.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&view.stdout).expect("json");
    assert_eq!(view["current-context"], "demo");
    assert_eq!(
        view["clusters"][0]["cluster"]["server"],
        "https://203.0.113.7:6443"
    );
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(
            view["clusters"][0]["cluster"]["certificate-authority-data"]
                .as_str()
                .expect("ca"),
        )
        .expect("base64");
    assert_eq!(
        ca,
        std::fs::read(workspace.state_dir().join("pki/ca.crt")).expect("ca")
    );
    let cert = base64::engine::general_purpose::STANDARD
        .decode(
            view["users"][0]["user"]["client-certificate-data"]
                .as_str()
                .expect("cert"),
        )
        .expect("base64");
    assert_eq!(
        cert,
        std::fs::read(workspace.state_dir().join("pki/admin.crt")).expect("admin")
    );
    // The break-glass kubeconfig stays in the state directory.
    assert!(!workspace.out_dir().join("super-admin.kubeconfig").exists());
    assert_eq!(
        mode_of(&workspace.state_dir().join("super-admin.kubeconfig")),
        0o600
    );
}

#[test]
fn state_directory_is_private_and_reused() {
    let workspace = rendered_workspace();
    let state = workspace.state_dir();
    assert_eq!(mode_of(&state), 0o700);
    assert_eq!(mode_of(&state.join("pki")), 0o700);
    for entry in std::fs::read_dir(state.join("pki")).expect("pki").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let expected = if name.ends_with(".crt") || name.ends_with(".pub") {
            0o644
        } else {
            0o600
        };
        assert_eq!(mode_of(&entry.path()), expected, "{name}");
    }
    // No join token is kept: each `up` makes one for its nodes, in the cluster only.
    assert!(!state.join("pki/bootstrap-token").exists());
    let before: Vec<Vec<u8>> = ["ca.crt", "ca.key", "sa.key"]
        .iter()
        .map(|f| std::fs::read(state.join("pki").join(f)).expect("read"))
        .collect();
    let first =
        std::fs::read(workspace.out_dir().join("demo-control-plane-1.ign")).expect("config");
    success(&workspace.render(&["--endpoint", "203.0.113.7"]));
    let after: Vec<Vec<u8>> = ["ca.crt", "ca.key", "sa.key"]
        .iter()
        .map(|f| std::fs::read(state.join("pki").join(f)).expect("read"))
        .collect();
    assert_eq!(before, after, "the PKI must be created once and reused");
    let second =
        std::fs::read(workspace.out_dir().join("demo-control-plane-1.ign")).expect("config");
    // Deterministic for the same PKI and file, but for the sealed files (a fresh key and IV
    // each time, so no two renders seal alike).
    let (first, first_sealed) = without_sealed_bytes(&first);
    let (second, second_sealed) = without_sealed_bytes(&second);
    assert_eq!(first, second, "rendering is deterministic");
    assert_eq!(first_sealed, second_sealed);
    // The join token, the four CA and service-account keys, and the Secrets key.
    assert_eq!(first_sealed.len(), 6, "{first_sealed:?}");
    assert!(
        first_sealed.contains(&"/etc/flatstack/secrets-encryption.key.sealed".to_string()),
        "{first_sealed:?}"
    );
}

#[test]
fn loose_permissions_are_refused_with_a_fix() {
    let workspace = rendered_workspace();
    let state = workspace.state_dir();
    std::fs::remove_dir_all(workspace.out_dir()).expect("clean");

    set_mode(&state, 0o755);
    let output = workspace.render(&[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("mode 0755"), "{}", stderr(&output));
    assert!(stderr(&output).contains(&format!("chmod 700 {}", state.display())));
    assert!(!workspace.out_dir().exists());
    set_mode(&state, 0o700);

    let key = state.join("pki/ca.key");
    set_mode(&key, 0o644);
    let output = workspace.render(&[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("ca.key has mode 0644"),
        "{}",
        stderr(&output)
    );
    assert!(!stderr(&output).contains("PRIVATE KEY"));
    set_mode(&key, 0o600);
    success(&workspace.render(&[]));
}

#[test]
fn a_damaged_pki_is_reported_not_replaced() {
    let workspace = rendered_workspace();
    let pki = workspace.state_dir().join("pki");
    let ca = std::fs::read(pki.join("ca.crt")).expect("ca");
    std::fs::remove_file(pki.join("etcd-ca.key")).expect("remove");
    let output = workspace.render(&[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("etcd-ca.key is missing"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read(pki.join("ca.crt")).expect("ca"),
        ca,
        "the CA must survive"
    );
}

/// Each kind of damage is refused naming the file, with exit 2, and nothing is written: a
/// garbage certificate, a CA certificate that does not match its key, an administrator
/// certificate from another CA, a `sa.pub` that is only a header.
#[test]
fn a_pki_that_does_not_hold_together_is_refused_naming_the_file() {
    let other = rendered_workspace();
    let other_pki = other.state_dir().join("pki");
    type Damage<'a> = Box<dyn Fn(&std::path::Path) + 'a>;
    let cases: [(&str, Damage, &str); 4] = [
        (
            "ca.crt",
            Box::new(|pki| {
                std::fs::write(
                    pki.join("ca.crt"),
                    "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
                )
                .expect("write")
            }),
            "ca.crt is not a PEM certificate",
        ),
        (
            "ca.crt",
            Box::new(|pki| {
                std::fs::copy(other_pki.join("ca.crt"), pki.join("ca.crt")).expect("copy");
            }),
            "ca.crt does not hold the public half of ca.key",
        ),
        (
            "admin.crt",
            Box::new(|pki| {
                std::fs::copy(other_pki.join("admin.crt"), pki.join("admin.crt")).expect("copy");
                std::fs::copy(other_pki.join("admin.key"), pki.join("admin.key")).expect("copy");
            }),
            "admin.crt is not signed by ca.crt",
        ),
        (
            "sa.pub",
            Box::new(|pki| {
                std::fs::write(
                    pki.join("sa.pub"),
                    "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
                )
                .expect("write")
            }),
            "sa.pub is not the public half of sa.key",
        ),
    ];
    for (file, damage, message) in cases {
        let workspace = rendered_workspace();
        std::fs::remove_dir_all(workspace.out_dir()).expect("clean");
        let pki = workspace.state_dir().join("pki");
        damage(&pki);
        let before = std::fs::read(pki.join(file)).expect("damaged file");
        let output = workspace.render(&[]);
        assert_eq!(output.status.code(), Some(2), "{file}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(message),
            "{file}: {}",
            stderr(&output)
        );
        assert!(!workspace.out_dir().exists(), "{file}: configs written");
        assert_eq!(
            std::fs::read(pki.join(file)).expect("kept"),
            before,
            "{file} replaced"
        );
        assert!(!stderr(&output).contains("PRIVATE KEY"));
    }
}

#[test]
fn secrets_never_reach_the_terminal() {
    let workspace = rendered_workspace();
    let output = workspace.render(&["--endpoint", "203.0.113.7"]);
    let all = format!("{}{}", stdout(&output), stderr(&output));
    assert!(!all.contains("PRIVATE KEY"));
    // Neither a join token nor a sealing key (128 hex digits) is ever shown.
    for word in all.split(|c: char| c.is_whitespace() || c == '`' || c == ',') {
        assert!(!is_token(word), "{all}");
        assert!(
            !(word.len() >= 128 && word.bytes().all(|b| b.is_ascii_hexdigit())),
            "{all}"
        );
    }
}

/// flatstack's admin certificate near its end (made here by openssl: same key, signed by the
/// cluster CA, 10 days) is re-issued by `flatstack kubeconfig` for the same key, a year long,
/// and the kubeconfig carries the new one; openssl checks the result.
#[test]
fn kubeconfig_reissues_an_admin_certificate_near_its_end() {
    let workspace = rendered_workspace();
    let pki = workspace.state_dir().join("pki");
    let path = |name: &str| pki.join(name).to_str().expect("path").to_string();
    let csr = openssl(
        &[
            "req",
            "-new",
            "-key",
            &path("admin.key"),
            "-subj",
            "/O=kubeadm:cluster-admins/CN=flatstack-admin",
        ],
        None,
    );
    let extensions = workspace.path("client.ext");
    std::fs::write(&extensions, "extendedKeyUsage=clientAuth\n").expect("write");
    let short = openssl(
        &[
            "x509",
            "-req",
            "-days",
            "10",
            "-CA",
            &path("ca.crt"),
            "-CAkey",
            &path("ca.key"),
            "-set_serial",
            "4242",
            "-extfile",
            extensions.to_str().expect("path"),
        ],
        Some(&csr),
    );
    std::fs::write(pki.join("admin.crt"), &short).expect("write");
    let key_before = std::fs::read(pki.join("admin.key")).expect("key");

    let state = workspace.state_dir();
    let made = workspace.flatstack(&[
        "kubeconfig",
        "--api-address",
        "127.0.0.1:6443",
        "--state-dir",
        state.to_str().expect("path"),
    ]);
    let kubeconfig = success(&made);
    let said = String::from_utf8_lossy(&made.stderr);
    assert!(
        said.contains("re-issued the admin client certificate, which expires ")
            && said.contains("(in 9 days)"),
        "{said}"
    );
    assert!(!said.contains("super-admin"), "only the one due: {said}");
    let renewed = std::fs::read(pki.join("admin.crt")).expect("cert");
    assert_ne!(renewed, short);
    assert_eq!(
        std::fs::read(pki.join("admin.key")).expect("key"),
        key_before
    );
    let end =
        String::from_utf8(openssl(&["x509", "-noout", "-enddate"], Some(&renewed))).expect("utf-8");
    let year = time::OffsetDateTime::now_utc().year() + 1;
    assert!(end.contains(&year.to_string()), "{end}");
    let verified = openssl(&["verify", "-CAfile", &path("ca.crt")], Some(&renewed));
    assert!(String::from_utf8_lossy(&verified).contains("OK"));
    use base64::Engine as _;
    let embedded = base64::engine::general_purpose::STANDARD.encode(&renewed);
    assert!(kubeconfig.contains(&embedded), "{kubeconfig}");
    // A second run has nothing to re-issue.
    let again = workspace.flatstack(&[
        "kubeconfig",
        "--api-address",
        "127.0.0.1:6443",
        "--state-dir",
        state.to_str().expect("path"),
    ]);
    success(&again);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("re-issued"));
}
