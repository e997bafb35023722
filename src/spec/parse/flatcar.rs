//! `[flatcar]`: the channel, an exact release or an image of one's own.

use super::*;

pub(super) fn read_flatcar(mut t: Table<'_, '_>, p: &mut Problems) -> Option<FlatcarSpec> {
    let channel = t.string("channel", p);
    let version = t.string("version", p);
    let image = t.string("image", p);
    t.finish(p);
    let channel = match channel {
        None => Some(Channel::Stable),
        Some(c) => {
            let parsed = Channel::parse(c.get_ref());
            if parsed.is_none() {
                p.error(
                    c.span(),
                    format!("unknown Flatcar channel `{}`", c.get_ref()),
                    "use one of stable, beta, alpha, lts",
                );
            }
            parsed
        }
    };
    if let Some(v) = &version {
        let parts: Vec<&str> = v.get_ref().split('.').collect();
        let numeric = parts.len() == 3
            && parts
                .iter()
                .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()));
        if !numeric {
            p.error(
                v.span(),
                format!(
                    "`flatcar.version` is `{}`, not a Flatcar release",
                    v.get_ref()
                ),
                "Flatcar releases look like `4230.2.3`; leave it out for the newest of the channel",
            );
        }
    }
    if let Some(i) = &image {
        if i.get_ref().trim().is_empty() {
            p.error(
                i.span(),
                "`flatcar.image` is empty",
                "name a Glance image, or leave it out",
            );
        }
        if let Some(v) = &version {
            p.error(
                v.span(),
                "`flatcar.version` and `flatcar.image` both choose the image",
                "keep one: `image` boots an existing Glance image, `version` the release `flatstack image ensure` uploads",
            );
        }
    }
    Some(FlatcarSpec {
        channel: channel?,
        version: version.map(At::into_inner),
        image: image.map(At::into_inner),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn channel_and_release_are_read_and_checked() {
        let spec = with("[flatcar]\nchannel = \"beta\"\nversion = \"4230.2.3\"\n").expect("valid");
        assert_eq!(spec.flatcar.channel.as_str(), "beta");
        assert_eq!(spec.flatcar.version.as_deref(), Some("4230.2.3"));
        assert_eq!(
            problems("[flatcar]\nchannel = \"nightly\"\n"),
            ["unknown Flatcar channel `nightly`"]
        );
    }

    #[test]
    fn a_version_and_an_image_cannot_both_choose() {
        let problems = problems("[flatcar]\nversion = \"4230.2.3\"\nimage = \"mine\"\n");
        assert!(
            problems[0].contains("both choose the image"),
            "{problems:?}"
        );
    }
}
