//! `SHA256SUMS` files as the sysext bakery (and `sha256sum`) writes them: one
//! `<64 hex digits>  <file name>` line per image, `*` before the name in binary mode.

use crate::pins::KubernetesVersion;

/// One line of a `SHA256SUMS` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SumLine<'a> {
    /// Lowercase hex.
    pub(crate) sha256: String,
    /// The file name, without any directory part.
    pub(crate) file: &'a str,
}

/// Every well-formed line of `text`; other lines (comments, blank lines) are skipped.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = SumLine<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let sha256 = fields.next()?;
        let path = fields.next()?.trim_start_matches('*');
        let hex = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        let file = path.rsplit('/').next().unwrap_or(path);
        (hex && fields.next().is_none() && !file.is_empty()).then(|| SumLine {
            sha256: sha256.to_ascii_lowercase(),
            file,
        })
    })
}

/// The digest `text` lists for exactly `file`, if any.
pub(crate) fn digest_of(text: &str, file: &str) -> Option<String> {
    lines(text).find(|l| l.file == file).map(|l| l.sha256)
}

/// The x86-64 Kubernetes releases of `minor` that `text` lists, newest first, each once.
pub(crate) fn published_patches(texts: &[&str], major: u32, minor: u32) -> Vec<KubernetesVersion> {
    let mut versions: Vec<KubernetesVersion> = texts
        .iter()
        .flat_map(|text| lines(text))
        .filter_map(|l| {
            let version = l
                .file
                .strip_prefix("kubernetes-")?
                .strip_suffix("-x86-64.raw")?;
            KubernetesVersion::parse(version)
        })
        .filter(|v| v.major == major && v.minor == minor)
        .collect();
    versions.sort_unstable_by(|a, b| b.cmp(a));
    versions.dedup();
    versions
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMS: &str = "\
0000000000000000000000000000000000000000000000000000000000000001  kubernetes-v1.37.1-x86-64.raw
0000000000000000000000000000000000000000000000000000000000000002  kubernetes-v1.37.1-arm64.raw
00000000000000000000000000000000000000000000000000000000000000AA *kubernetes-v1.37.3-x86-64.raw
0000000000000000000000000000000000000000000000000000000000000004  kubernetes-v1.36.9-x86-64.raw
0000000000000000000000000000000000000000000000000000000000000005  docker-28.0.1-x86-64.raw
not a line
0000000000000000000000000000000000000000000000000000000000000006  kubernetes-v1.37.2-x86-64.raw trailing
";

    #[test]
    fn finds_the_line_for_exactly_that_file() {
        assert_eq!(
            digest_of(SUMS, "kubernetes-v1.37.1-x86-64.raw").as_deref(),
            Some("0000000000000000000000000000000000000000000000000000000000000001")
        );
        // Binary-mode lines and upper-case hex are read, and given back lowercase.
        assert_eq!(
            digest_of(SUMS, "kubernetes-v1.37.3-x86-64.raw").as_deref(),
            Some("00000000000000000000000000000000000000000000000000000000000000aa")
        );
        assert_eq!(digest_of(SUMS, "kubernetes-v1.37.1-x86-64"), None);
        assert_eq!(digest_of(SUMS, "ubernetes-v1.37.1-x86-64.raw"), None);
        // A line with more than two fields is not trusted.
        assert_eq!(digest_of(SUMS, "kubernetes-v1.37.2-x86-64.raw"), None);
        assert_eq!(
            digest_of(
                "0000000000000000000000000000000000000000000000000000000000000007  dir/kubernetes-v1.35.2-x86-64.raw",
                "kubernetes-v1.35.2-x86-64.raw"
            )
            .as_deref(),
            Some("0000000000000000000000000000000000000000000000000000000000000007")
        );
    }

    #[test]
    fn lists_the_patches_of_one_minor_newest_first() {
        let other = "0000000000000000000000000000000000000000000000000000000000000009  kubernetes-v1.37.1-x86-64.raw\n\
                     0000000000000000000000000000000000000000000000000000000000000010  kubernetes-v1.37.10-x86-64.raw";
        let versions: Vec<String> = published_patches(&[SUMS, other], 1, 37)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(versions, ["v1.37.10", "v1.37.3", "v1.37.1"]);
        assert!(published_patches(&[SUMS], 1, 35).is_empty());
    }
}
