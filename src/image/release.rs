//! Flatcar releases: where a channel's files live, which version `current` is (`version.txt`),
//! and the SHA-512 the `DIGESTS` file gives for the OpenStack image.

use crate::spec::Channel;

/// The OpenStack image of a release (qcow2 inside bzip2).
pub(crate) const IMAGE_FILE: &str = "flatcar_production_openstack_image.img.bz2";

/// A CPU architecture Flatcar is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// The release directory's name.
    pub(crate) fn directory(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64-usr",
            Arch::Arm64 => "arm64-usr",
        }
    }

    /// Glance's `architecture` property.
    pub(crate) fn glance(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }
}

/// The server of a channel's releases, e.g. `https://stable.release.flatcar-linux.net`, or a
/// mirror that lays files out the same way.
pub(crate) fn channel_url(channel: Channel, mirror: Option<&str>) -> String {
    match mirror {
        Some(base) => base.trim_end_matches('/').to_string(),
        None => format!("https://{}.release.flatcar-linux.net", channel.as_str()),
    }
}

/// The directory of `release` (a version, or `current`).
pub(crate) fn release_url(base: &str, arch: Arch, release: &str) -> String {
    format!("{base}/{}/{release}", arch.directory())
}

/// `FLATCAR_VERSION` from a `version.txt`.
pub(crate) fn parse_version_txt(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.trim().strip_prefix("FLATCAR_VERSION="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| is_version(v))
}

/// A Flatcar version: `BUILD.BRANCH.PATCH`, digits only.
pub(crate) fn is_version(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The SHA-512 (lowercase hex) a `DIGESTS` file gives for `file`: the line `<hex>  <file>` in
/// the section after `# SHA512 HASH`.
pub(crate) fn sha512_from_digests(text: &str, file: &str) -> Option<String> {
    let mut in_sha512 = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('#') {
            in_sha512 = header.trim().eq_ignore_ascii_case("SHA512 HASH");
            continue;
        }
        if !in_sha512 {
            continue;
        }
        let mut fields = line.split_whitespace();
        if let (Some(hash), Some(name)) = (fields.next(), fields.next())
            && name.trim_start_matches('*') == file
            && hash.len() == 128
            && hash.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Some(hash.to_ascii_lowercase());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_txt_gives_the_version() {
        let text = "FLATCAR_BUILD=3510\nFLATCAR_BRANCH=2\nFLATCAR_PATCH=8\nFLATCAR_VERSION=3510.2.8\nFLATCAR_VERSION_ID=3510.2.8\nFLATCAR_BUILD_ID=\"2023-09-19-1914\"\n";
        assert_eq!(parse_version_txt(text).as_deref(), Some("3510.2.8"));
        assert_eq!(parse_version_txt("FLATCAR_VERSION=../../x\n"), None);
        assert_eq!(parse_version_txt("nothing here"), None);
    }

    #[test]
    fn digests_give_the_sha512_line_of_the_file() {
        let md5 = "0".repeat(32);
        let sha1 = "1".repeat(40);
        let sha512 = "Ab".repeat(64);
        let text = format!(
            "# MD5 HASH\n{md5}  {IMAGE_FILE}\n# SHA1 HASH\n{sha1}  {IMAGE_FILE}\n# SHA512 HASH\n{}  other.bz2\n{sha512}  {IMAGE_FILE}\n",
            "c".repeat(128)
        );
        assert_eq!(
            sha512_from_digests(&text, IMAGE_FILE),
            Some(sha512.to_ascii_lowercase())
        );
        assert_eq!(sha512_from_digests(&text, "missing.bz2"), None);
        // A hash in another section is not taken for SHA-512.
        let only_md5 = format!("# MD5 HASH\n{}  {IMAGE_FILE}\n", "d".repeat(128));
        assert_eq!(sha512_from_digests(&only_md5, IMAGE_FILE), None);
    }

    #[test]
    fn urls_follow_the_release_layout() {
        assert_eq!(
            release_url(&channel_url(Channel::Stable, None), Arch::Amd64, "current"),
            "https://stable.release.flatcar-linux.net/amd64-usr/current"
        );
        assert_eq!(
            release_url(
                &channel_url(Channel::Lts, Some("http://mirror/")),
                Arch::Arm64,
                "4081.3.0"
            ),
            "http://mirror/arm64-usr/4081.3.0"
        );
    }
}
