//! `[access]`: SSH keys, the Nova keypair, and who may reach the API and SSH.

use super::*;

pub(super) fn read_access(t: Option<Table<'_, '_>>, p: &mut Problems) -> Option<AccessSpec> {
    let default_api = vec![IpNet::V4(Ipv4Net::default())];
    let Some(mut t) = t else {
        return Some(AccessSpec {
            ssh_public_keys: Vec::new(),
            keypair: None,
            api_cidrs: default_api,
            ssh_cidrs: Vec::new(),
        });
    };
    let keys = t.strings("ssh_public_keys", p).unwrap_or_default();
    let keypair = t.string("keypair", p);
    let api_cidrs = t.strings("api_cidrs", p);
    let ssh_cidrs = t.strings("ssh_cidrs", p).unwrap_or_default();
    let span = t.span();
    t.finish(p);

    for key in &keys {
        check_ssh_key(key, p);
    }
    if let Some(k) = &keypair
        && k.get_ref().trim().is_empty()
    {
        p.error(
            k.span(),
            "`access.keypair` is empty",
            "name a Nova keypair, or leave it out",
        );
    }
    let api = match api_cidrs {
        Some(list) => list
            .iter()
            .filter_map(|c| parse_cidr(c, "access.api_cidrs", p))
            .collect(),
        None => default_api,
    };
    let ssh: Vec<IpNet> = ssh_cidrs
        .iter()
        .filter_map(|c| parse_cidr(c, "access.ssh_cidrs", p))
        .collect();
    if !ssh.is_empty() && keys.is_empty() && keypair.is_none() {
        p.error(
            span,
            "`access.ssh_cidrs` opens SSH, but no key would let anyone in",
            "add `ssh_public_keys` or `keypair`, or remove `ssh_cidrs` (flatstack never needs SSH)",
        );
    }
    Some(AccessSpec {
        ssh_public_keys: keys
            .into_iter()
            .map(|k| k.into_inner().trim().to_string())
            .collect(),
        keypair: keypair.map(At::into_inner),
        api_cidrs: api,
        ssh_cidrs: ssh,
    })
}

pub(super) fn check_ssh_key(key: &At<String>, p: &mut Problems) {
    const TYPES: [&str; 7] = [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    let mut fields = key.get_ref().split_whitespace();
    let kind = fields.next().unwrap_or_default();
    let blob = fields.next().unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD.decode(blob).ok();
    // The blob starts with the key type again, as a length-prefixed string.
    let consistent = decoded.as_deref().is_some_and(|d| {
        d.len() > 4 + kind.len()
            && d[..4] == (kind.len() as u32).to_be_bytes()
            && &d[4..4 + kind.len()] == kind.as_bytes()
    });
    if !TYPES.contains(&kind) || !consistent {
        let shown: String = key.get_ref().chars().take(24).collect();
        p.error(
            key.span(),
            format!("`{shown}...` is not an OpenSSH public key"),
            "paste one line of a .pub file, e.g. the output of `cat ~/.ssh/id_ed25519.pub`",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn the_api_is_open_by_default_and_ssh_is_not() {
        let spec = with("").expect("valid");
        assert_eq!(spec.access.api_cidrs[0].to_string(), "0.0.0.0/0");
        assert!(spec.access.ssh_cidrs.is_empty());
    }

    #[test]
    fn a_key_that_is_not_an_openssh_public_key_is_refused() {
        let problems = problems("[access]\nssh_public_keys = [\"hello world\"]\n");
        assert!(
            problems[0].contains("is not an OpenSSH public key"),
            "{problems:?}"
        );
    }
}
