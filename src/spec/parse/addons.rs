//! `[addons]`, `[ingress]` and `[jupyterhub]`: which add-ons run and how they are reached.

use super::*;

pub(super) fn read_addons(t: Option<Table<'_, '_>>, p: &mut Problems) -> Option<AddonsSpec> {
    let mut addons = AddonsSpec {
        cloud_controller: true,
        cinder_csi: true,
        ingress: true,
        metrics_server: true,
        kured: true,
    };
    let Some(mut t) = t else {
        return Some(addons);
    };
    let mut read = |key, slot: &mut bool| {
        if let Some(b) = t.boolean(key, p) {
            *slot = b.into_inner();
        }
    };
    read("cloud_controller", &mut addons.cloud_controller);
    read("cinder_csi", &mut addons.cinder_csi);
    read("ingress", &mut addons.ingress);
    read("metrics_server", &mut addons.metrics_server);
    read("kured", &mut addons.kured);
    let span = t.span();
    t.finish(p);
    if addons.cinder_csi && !addons.cloud_controller {
        p.error(
            span,
            "`addons.cinder_csi` needs `addons.cloud_controller`",
            "Cinder CSI attaches volumes by the OpenStack provider ID the cloud controller sets",
        );
    }
    Some(addons)
}

pub(super) fn read_ingress(t: Option<Table<'_, '_>>, p: &mut Problems) -> Option<IngressSpec> {
    let mut ingress = IngressSpec {
        exposure: IngressExposure::ControlPlane,
        http_cidrs: vec![IpNet::V4(Ipv4Net::default())],
        hostname: None,
        acme: None,
    };
    let Some(mut t) = t else {
        return Some(ingress);
    };
    let exposure = t.string("exposure", p);
    let cidrs = t.strings("http_cidrs", p);
    let hostname = t.string("hostname", p);
    let email = t.string("acme_email", p);
    let server = t.string("acme_server", p);
    t.finish(p);

    let mut valid = true;
    if let Some(e) = exposure {
        match e.get_ref().as_str() {
            "control-plane" => ingress.exposure = IngressExposure::ControlPlane,
            "load-balancer" => ingress.exposure = IngressExposure::LoadBalancer,
            other => {
                p.error(
                    e.span(),
                    format!("`ingress.exposure` `{other}` is not known"),
                    "use \"control-plane\" (ports 80/443 of the API's floating IP) or \"load-balancer\" (an Octavia load balancer)",
                );
                valid = false;
            }
        }
    }
    if let Some(list) = cidrs {
        let before = list.len();
        ingress.http_cidrs = list
            .iter()
            .filter_map(|c| parse_cidr(c, "ingress.http_cidrs", p))
            .collect();
        valid &= ingress.http_cidrs.len() == before;
    }
    if let Some(h) = &hostname {
        valid &= check_hostname(h, p);
    }
    match (&hostname, email) {
        (Some(h), Some(email)) => {
            let address = email.get_ref();
            let ok = address
                .split_once('@')
                .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'))
                && !address.contains(char::is_whitespace);
            if !ok {
                p.error(
                    email.span(),
                    format!("`{address}` is not an email address"),
                    "Let's Encrypt writes to this address about expiring certificates",
                );
                valid = false;
            }
            let server = match server {
                None => LETSENCRYPT_PRODUCTION.to_string(),
                Some(s) => match s.get_ref().as_str() {
                    "production" => LETSENCRYPT_PRODUCTION.to_string(),
                    "staging" => LETSENCRYPT_STAGING.to_string(),
                    url if url.starts_with("https://") => url.to_string(),
                    _ => {
                        p.error(
                            s.span(),
                            format!("`ingress.acme_server` `{}` is not known", s.get_ref()),
                            "use \"production\", \"staging\" or an https:// ACME directory URL",
                        );
                        valid = false;
                        String::new()
                    }
                },
            };
            ingress.hostname = Some(h.get_ref().to_ascii_lowercase());
            ingress.acme = Some(AcmeSpec {
                email: address.clone(),
                server,
            });
        }
        (Some(h), None) => {
            p.error(
                h.span(),
                "`ingress.hostname` is set but `ingress.acme_email` is not",
                "add `acme_email = \"you@example.org\"` so Let's Encrypt can issue the certificate",
            );
            valid = false;
        }
        (None, Some(email)) => {
            p.error(
                email.span(),
                "`ingress.acme_email` without `ingress.hostname`",
                "certificates are issued for a name: add `hostname`, or remove `acme_email`",
            );
            valid = false;
        }
        (None, None) => {
            if let Some(s) = server {
                p.error(
                    s.span(),
                    "`ingress.acme_server` without `ingress.hostname`",
                    "add `hostname` and `acme_email`, or remove `acme_server`",
                );
                valid = false;
            }
        }
    }
    valid.then_some(ingress)
}

/// A DNS name Let's Encrypt can issue for: letters, digits and hyphens in dot-separated
/// labels, at least two labels, at most 64 characters (a certificate's common name limit).
pub(super) fn check_hostname(h: &At<String>, p: &mut Problems) -> bool {
    let name = h.get_ref();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !(name.contains('.') && name.split('.').all(label_ok)) {
        p.error(
            h.span(),
            format!("`{name}` is not a DNS name"),
            "write a name such as \"hub.myproject.projects.jetstream-cloud.org\" (no scheme, no port)",
        );
        return false;
    }
    if name.len() > 64 {
        p.error(
            h.span(),
            format!("`{name}` is {} characters long", name.len()),
            "Let's Encrypt issues only for names of at most 64 characters: use a shorter name",
        );
        return false;
    }
    true
}

pub(super) fn read_jupyterhub(
    t: Option<Table<'_, '_>>,
    p: &mut Problems,
) -> Option<JupyterHubSpec> {
    let mut hub = JupyterHubSpec {
        namespace: "jupyterhub".to_string(),
        authenticator: Authenticator::SharedPassword,
        admin_users: Vec::new(),
        allowed_users: Vec::new(),
        user_storage_gb: 10,
        values_file: None,
    };
    let Some(mut t) = t else {
        return Some(hub);
    };
    let namespace = t.string("namespace", p);
    let authenticator = t.string("authenticator", p);
    let admins = t.strings("admin_users", p);
    let allowed = t.strings("allowed_users", p);
    let storage = t.integer("user_storage_gb", p);
    let values = t.string("values_file", p);
    let client_id = t.string("github_client_id", p);
    let secret_env = t.string("github_client_secret_env", p);
    let orgs = t.strings("github_allowed_organizations", p);
    let span = t.span();
    t.finish(p);

    let mut valid = true;
    if let Some(ns) = namespace {
        let name = ns.get_ref();
        let taken = name.starts_with("kube-")
            || name.starts_with("flatstack-smoke-")
            || ["default", "traefik", "cert-manager"].contains(&name.as_str());
        if !is_valid_name(name) {
            p.error(
                ns.span(),
                format!("`{name}` is not a namespace name"),
                NAME_RULE,
            );
            valid = false;
        } else if taken {
            p.error(
                ns.span(),
                format!("namespace `{name}` belongs to the cluster or its add-ons"),
                "give JupyterHub a namespace of its own, e.g. \"jupyterhub\" (uninstalling with --delete-user-data deletes it)",
            );
            valid = false;
        }
        hub.namespace = ns.into_inner();
    }
    let list = |v: Option<Vec<At<String>>>| -> Vec<String> {
        v.unwrap_or_default()
            .into_iter()
            .map(At::into_inner)
            .collect()
    };
    hub.admin_users = list(admins);
    hub.allowed_users = list(allowed);
    if let Some(gb) = storage {
        match u32::try_from(*gb.get_ref()) {
            Ok(n) if (1..=16384).contains(&n) => hub.user_storage_gb = n,
            _ => {
                p.error(
                    gb.span(),
                    format!(
                        "`jupyterhub.user_storage_gb` {} is out of range",
                        gb.get_ref()
                    ),
                    "give each user between 1 and 16384 GB",
                );
                valid = false;
            }
        }
    }
    if let Some(v) = values {
        if v.get_ref().trim().is_empty() {
            p.error(
                v.span(),
                "`jupyterhub.values_file` is empty",
                "name a YAML file of chart values, or leave it out",
            );
            valid = false;
        }
        hub.values_file = Some(std::path::PathBuf::from(v.into_inner()));
    }
    let github_keys = client_id.is_some() || secret_env.is_some() || orgs.is_some();
    match authenticator.as_ref().map(|a| a.get_ref().as_str()) {
        None | Some("shared-password" | "dummy") => {
            if github_keys {
                p.error(
                    span.clone(),
                    "`github_*` keys are set but the authenticator is not GitHub",
                    "add `authenticator = \"github\"`, or remove the github_* keys",
                );
                valid = false;
            }
        }
        Some("github") => match client_id {
            Some(id) if !id.get_ref().trim().is_empty() => {
                let secret_env = secret_env
                    .map(At::into_inner)
                    .unwrap_or_else(|| "GITHUB_CLIENT_SECRET".to_string());
                hub.authenticator = Authenticator::GitHub {
                    client_id: id.into_inner(),
                    client_secret_env: secret_env,
                    allowed_organizations: list(orgs),
                };
            }
            _ => {
                p.error(
                    span.clone(),
                    "`authenticator = \"github\"` needs `github_client_id`",
                    "register an OAuth app at https://github.com/settings/developers with callback https://<hostname>/hub/oauth_callback",
                );
                valid = false;
            }
        },
        Some(other) => {
            let at = authenticator.as_ref().map_or(span.clone(), |a| a.span());
            p.error(
                at,
                format!("`jupyterhub.authenticator` `{other}` is not known"),
                "use \"github\" (GitHub OAuth) or \"shared-password\" (one password flatstack makes, for trials)",
            );
            valid = false;
        }
    }
    valid.then_some(hub)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn ingress_is_read_and_its_exposure_checked() {
        let spec = with("[ingress]\nhttp_cidrs = [\"192.0.2.0/24\"]\n").expect("valid");
        assert_eq!(spec.ingress.http_cidrs[0].to_string(), "192.0.2.0/24");
        assert_eq!(
            problems("[ingress]\nexposure = \"sideways\"\n"),
            ["`ingress.exposure` `sideways` is not known"]
        );
    }

    #[test]
    fn a_hostname_needs_an_acme_email() {
        let problems = problems("[ingress]\nhostname = \"hub.example.org\"\n");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("`ingress.acme_email` is not")),
            "{problems:?}"
        );
    }
}
