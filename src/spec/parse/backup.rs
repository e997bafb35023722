//! `[backup]`: whether etcd is snapshotted to the cloud's object store, how often, and how
//! many snapshots are kept.

use super::*;

/// The intervals a snapshot schedule may have: each divides a day, so the schedule is the
/// same every day and "twice the schedule" is an exact age.
pub(super) const EVERY_HOURS: [u32; 8] = [1, 2, 3, 4, 6, 8, 12, 24];

/// Most snapshots kept: each is a whole etcd, and listings stay one page.
const MAX_KEEP: i64 = 1000;

pub(super) fn read_backup(t: Option<Table<'_, '_>>, p: &mut Problems) -> Option<BackupSpec> {
    let mut backup = BackupSpec::default();
    let Some(mut t) = t else {
        return Some(backup);
    };
    let enabled = t.boolean("enabled", p);
    let every = t.string("every", p);
    let keep = t.integer("keep", p);
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
    valid.then_some(backup)
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
        for keep in ["0", "-1", "1001"] {
            let problems = problems(&format!("[backup]\nkeep = {keep}\n"));
            assert!(problems[0].contains("out of range"), "{keep}: {problems:?}");
        }
        let problems = problems("[backup]\nstore = \"ftp\"\n");
        assert!(problems[0].contains("store"), "{problems:?}");
    }
}
