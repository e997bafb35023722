//! `[kubernetes]`: the release (a supported minor), and where the sysext comes from and its
//! digest.

use super::*;

pub(super) fn read_kubernetes(mut t: Table<'_, '_>, p: &mut Problems) -> Option<KubernetesSpec> {
    let version_text = t.string("version", p);
    let sysext_url = t.string("sysext_url", p);
    let sysext_sha256 = t.string("sysext_sha256", p);
    let sysupdate_url = t.string("sysupdate_url", p);
    let patch_updates = t.boolean("patch_updates", p);
    let span = t.span();
    let version_path = t.key_path("version");
    t.finish(p);

    let Some(version_text) = version_text else {
        p.error(
            span,
            format!("missing required key `{version_path}`"),
            version_hint(),
        );
        return None;
    };
    let Some(version) = KubernetesVersion::parse(version_text.get_ref()) else {
        p.error(
            version_text.span(),
            format!(
                "`{version_path}` is `{}`, not a Kubernetes release MAJOR.MINOR.PATCH",
                version_text.get_ref()
            ),
            version_hint(),
        );
        return None;
    };
    if pins::supported_minor(version).is_none() {
        p.error(
            version_text.span(),
            format!("Kubernetes {version} is not supported"),
            format!(
                "flatstack supports the minors upstream supports: {} (e.g. `version = \"{}\"`)",
                pins::supported_minors_list(),
                pins::default_kubernetes()
                    .to_string()
                    .trim_start_matches('v')
            ),
        );
        return None;
    }

    for url in [&sysext_url, &sysupdate_url].into_iter().flatten() {
        check_http_url(url, p);
    }
    if let Some(url) = &sysext_url
        && url.get_ref().ends_with('/')
    {
        p.error(
            url.span(),
            format!(
                "`kubernetes.sysext_url` `{}` names a directory, not an image file",
                url.get_ref()
            ),
            "end it with the image's file name, e.g. `.../kubernetes-v1.37.1-x86-64.raw`",
        );
    }
    // A bakery-named image of another release would boot other binaries than `version` says.
    if let Some(url) = &sysext_url
        && let Some(named) = url
            .get_ref()
            .rsplit('/')
            .next()
            .and_then(|file| file.strip_prefix("kubernetes-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(release, _)| KubernetesVersion::parse(release))
        && named != version
    {
        p.error(
            url.span(),
            format!(
                "`kubernetes.sysext_url` names the image of Kubernetes {named}, but `{version_path}` is {version}"
            ),
            format!(
                "point it at `.../{}`, or set `version` to the release you mean",
                version.sysext_file_name()
            ),
        );
        return None;
    }
    let sha256 = match &sysext_sha256 {
        Some(sha) => {
            let normalized = sha.get_ref().trim().to_ascii_lowercase();
            if normalized.len() != 64 || !normalized.bytes().all(|b| b.is_ascii_hexdigit()) {
                p.error(
                    sha.span(),
                    "`kubernetes.sysext_sha256` must be 64 hexadecimal digits",
                    "use the output of `sha256sum` on the image, without the file name",
                );
                return None;
            }
            Some(normalized)
        }
        None => None,
    };
    // Without a digest here, `plan`, `render` and `up` read it from the SHA256SUMS published
    // beside the image, and record it for the cluster.
    let url = match &sysext_url {
        Some(url) => url.get_ref().clone(),
        None => format!("{}/{}", pins::SYSEXT_BAKERY, version.sysext_file_name()),
    };
    let patch_updates = patch_updates.is_none_or(At::into_inner);
    let sysupdate_url = match (patch_updates, sysupdate_url, &sysext_url) {
        (false, _, _) => None,
        (true, Some(url), _) => Some(url.into_inner()),
        (true, None, None) => Some(format!("{}/kubernetes", pins::SYSEXT_BAKERY)),
        (true, None, Some(_)) => None,
    };
    Some(KubernetesSpec {
        version,
        sysext_url: url,
        sysext_sha256: sha256,
        sysupdate_url,
    })
}

pub(super) fn version_hint() -> String {
    let version = pins::default_kubernetes().to_string();
    format!("e.g. `version = \"{}\"`", version.trim_start_matches('v'))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn an_unsupported_minor_is_refused_naming_the_supported_ones() {
        let text = base().replace("1.37.1", "1.33.4");
        let problems = parsed(&text).expect_err("1.33");
        assert_eq!(problems, ["Kubernetes v1.33.4 is not supported"]);
    }

    #[test]
    fn a_sysext_url_naming_another_release_is_refused() {
        let text = base().replace(
            "version = \"1.37.1\"",
            "version = \"1.37.1\"\nsysext_url = \"https://m.example/kubernetes-v1.36.2-x86-64.raw\"",
        );
        let problems = parsed(&text).expect_err("another release");
        assert_eq!(
            problems,
            [
                "`kubernetes.sysext_url` names the image of Kubernetes v1.36.2, but `kubernetes.version` is v1.37.1"
            ]
        );
        let own = base().replace(
            "version = \"1.37.1\"",
            "version = \"1.37.1\"\nsysext_url = \"https://m.example/kubernetes-v1.37.1-x86-64.raw\"",
        );
        assert!(parsed(&own).is_ok());
    }

    #[test]
    fn the_version_must_be_a_release() {
        let problems = parsed(&base().replace("1.37.1", "1.37")).expect_err("no patch");
        assert!(
            problems[0].contains("not a Kubernetes release"),
            "{problems:?}"
        );
        let spec = with("").expect("valid");
        assert_eq!(spec.kubernetes.version.to_string(), "v1.37.1");
    }
}
