//! `[backup]`: whether etcd is snapshotted to an object store (the cloud's Swift, or an
//! S3-compatible endpoint), how often, and how many snapshots are kept.

use super::*;

/// The intervals a snapshot schedule may have: each divides a day, so the schedule is the
/// same every day and "twice the schedule" is an exact age.
pub(super) const EVERY_HOURS: [u32; 8] = [1, 2, 3, 4, 6, 8, 12, 24];

/// The region an S3 endpoint is signed for when the file names none (AWS's first).
const DEFAULT_S3_REGION: &str = "us-east-1";

/// Most snapshots kept: each is a whole etcd, and the host script's listing stays one page
/// (S3 answers 1,000 keys a page: the kept ones and the one just uploaded).
const MAX_KEEP: i64 = 999;

pub(super) fn read_backup(t: Option<Table<'_, '_>>, p: &mut Problems) -> Option<BackupSpec> {
    let mut backup = BackupSpec::default();
    let Some(mut t) = t else {
        return Some(backup);
    };
    let enabled = t.boolean("enabled", p);
    let every = t.string("every", p);
    let keep = t.integer("keep", p);
    let store = t.string("store", p);
    let s3_endpoint = t.string("s3_endpoint", p);
    let s3_region = t.string("s3_region", p);
    t.finish(p);

    let mut valid = true;
    backup.enabled = enabled.map(At::into_inner);
    if let Some(every) = every {
        let hours = every
            .get_ref()
            .strip_suffix('h')
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| EVERY_HOURS.contains(n));
        match hours {
            Some(hours) => backup.every_hours = hours,
            None => {
                p.error(
                    every.span(),
                    format!(
                        "`backup.every` `{}` is not a snapshot interval",
                        every.get_ref()
                    ),
                    "use hours that divide a day: \"1h\", \"2h\", \"3h\", \"4h\", \"6h\", \"8h\", \"12h\" or \"24h\"",
                );
                valid = false;
            }
        }
    }
    if let Some(keep) = keep {
        match u32::try_from(*keep.get_ref()) {
            Ok(n) if (1..=MAX_KEEP).contains(&i64::from(n)) => backup.keep = n,
            _ => {
                p.error(
                    keep.span(),
                    format!("`backup.keep` {} is out of range", keep.get_ref()),
                    format!("keep from 1 to {MAX_KEEP} snapshots"),
                );
                valid = false;
            }
        }
    }
    match read_store(store, s3_endpoint, s3_region, p) {
        Some(store) => backup.store = store,
        None => valid = false,
    }
    valid.then_some(backup)
}

/// `store`, and the S3 endpoint and region that go with `store = "s3"` only.
fn read_store(
    store: Option<At<String>>,
    endpoint: Option<At<String>>,
    region: Option<At<String>>,
    p: &mut Problems,
) -> Option<BackupStore> {
    let s3 = match &store {
        None => false,
        Some(store) => match store.get_ref().as_str() {
            "swift" => false,
            "s3" => true,
            other => {
                p.error(
                    store.span(),
                    format!("`backup.store` `{other}` is not an object store flatstack writes to"),
                    "use \"swift\" (the cloud's own, the default) or \"s3\" (an S3-compatible endpoint, with `s3_endpoint`)",
                );
                return None;
            }
        },
    };
    if !s3 {
        if let Some(key) = endpoint.as_ref().or(region.as_ref()) {
            p.error(
                key.span(),
                "`s3_endpoint` and `s3_region` belong to an S3 store",
                "add `store = \"s3\"`, or remove them to keep the snapshots in the cloud's Swift",
            );
            return None;
        }
        return Some(BackupStore::Swift);
    }
    let Some(endpoint) = endpoint else {
        let at = store.map(|s| s.span()).unwrap_or_default();
        p.error(
            at,
            "`backup.store = \"s3\"` needs `s3_endpoint`",
            "name the store's URL, e.g. `s3_endpoint = \"https://js2.jetstream-cloud.org:8001\"` on Jetstream2",
        );
        return None;
    };
    let url = endpoint.get_ref().trim();
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    if !scheme_ok || url.contains('?') || url.contains('@') {
        p.error(
            endpoint.span(),
            format!("`backup.s3_endpoint` `{url}` is not an http(s) URL of a store"),
            "give scheme, host and port, e.g. \"https://js2.jetstream-cloud.org:8001\"",
        );
        return None;
    }
    let region = match region {
        Some(region) if region.get_ref().trim().is_empty() => {
            p.error(
                region.span(),
                "`backup.s3_region` is empty",
                format!("name the store's region (Jetstream2: \"RegionOne\"), or leave the key out for \"{DEFAULT_S3_REGION}\""),
            );
            return None;
        }
        Some(region) => region.get_ref().trim().to_string(),
        None => DEFAULT_S3_REGION.to_string(),
    };
    Some(BackupStore::S3 {
        endpoint: url.trim_end_matches('/').to_string(),
        region,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn backups_default_to_every_six_hours_keeping_fourteen_where_a_store_is() {
        let spec = with("").expect("valid");
        assert_eq!(spec.backup.enabled, None);
        assert_eq!((spec.backup.every_hours, spec.backup.keep), (6, 14));
        let spec = with("[backup]\nenabled = true\nevery = \"12h\"\nkeep = 30\n").expect("valid");
        assert_eq!(spec.backup.enabled, Some(true));
        assert_eq!((spec.backup.every_hours, spec.backup.keep), (12, 30));
        let spec = with("[backup]\nenabled = false\n").expect("valid");
        assert_eq!(spec.backup.enabled, Some(false));
    }

    #[test]
    fn intervals_that_do_not_divide_a_day_and_keeps_out_of_range_are_refused() {
        for every in ["5h", "0h", "6", "6m", "48h", ""] {
            let problems = problems(&format!("[backup]\nevery = \"{every}\"\n"));
            assert!(
                problems[0].contains("is not a snapshot interval"),
                "{every}: {problems:?}"
            );
        }
        for keep in ["0", "-1", "1000"] {
            let problems = problems(&format!("[backup]\nkeep = {keep}\n"));
            assert!(problems[0].contains("out of range"), "{keep}: {problems:?}");
        }
        let problems = problems("[backup]\nstore = \"ftp\"\n");
        assert!(problems[0].contains("store"), "{problems:?}");
    }

    #[test]
    fn an_s3_store_names_its_endpoint_and_a_swift_one_none() {
        use crate::spec::BackupStore;
        let spec = with("[backup]\nstore = \"s3\"\ns3_endpoint = \"https://js2.jetstream-cloud.org:8001/\"\ns3_region = \"RegionOne\"\n").expect("valid");
        assert_eq!(
            spec.backup.store,
            BackupStore::S3 {
                endpoint: "https://js2.jetstream-cloud.org:8001".into(),
                region: "RegionOne".into()
            }
        );
        let spec = with("[backup]\nstore = \"s3\"\ns3_endpoint = \"http://127.0.0.1:8080\"\n")
            .expect("valid");
        assert!(
            matches!(spec.backup.store, BackupStore::S3 { ref region, .. } if region == "us-east-1")
        );
        assert_eq!(
            with("[backup]\nstore = \"swift\"\n")
                .expect("valid")
                .backup
                .store,
            BackupStore::Swift
        );
        for (text, says) in [
            ("store = \"s3\"\n", "needs `s3_endpoint`"),
            (
                "s3_endpoint = \"https://s3.example.org\"\n",
                "belong to an S3 store",
            ),
            (
                "store = \"swift\"\ns3_region = \"x\"\n",
                "belong to an S3 store",
            ),
            (
                "store = \"s3\"\ns3_endpoint = \"s3.example.org\"\n",
                "is not an http(s) URL",
            ),
            (
                "store = \"s3\"\ns3_endpoint = \"https://k:s@s3.example.org\"\n",
                "is not an http(s) URL",
            ),
            (
                "store = \"s3\"\ns3_endpoint = \"https://s3.example.org\"\ns3_region = \" \"\n",
                "is empty",
            ),
        ] {
            let problems = problems(&format!("[backup]\n{text}"));
            assert!(problems[0].contains(says), "{text}: {problems:?}");
        }
    }
}
