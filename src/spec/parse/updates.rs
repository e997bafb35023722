//! `[updates]`: the Flatcar update group and the window nodes may reboot in.

use super::*;

pub(super) fn read_updates(
    t: Option<Table<'_, '_>>,
    channel: Channel,
    p: &mut Problems,
) -> Option<UpdatesSpec> {
    let mut updates = UpdatesSpec {
        enabled: true,
        group: channel.as_str().to_string(),
        server: None,
        reboot_window: RebootWindow {
            days: WEEKDAYS.iter().map(|d| d.to_string()).collect(),
            start: "00:00".to_string(),
            end: "23:59".to_string(),
            timezone: "UTC".to_string(),
        },
    };
    let Some(mut t) = t else {
        return Some(updates);
    };
    let enabled = t.boolean("enabled", p);
    let group = t.string("group", p);
    let server = t.string("server", p);
    let days = t.strings("reboot_days", p);
    let start = t.string("reboot_start", p);
    let end = t.string("reboot_end", p);
    let timezone = t.string("timezone", p);
    t.finish(p);

    let mut valid = true;
    if let Some(e) = enabled {
        updates.enabled = e.into_inner();
    }
    if let Some(g) = group {
        let ok = !g.get_ref().is_empty()
            && g.get_ref()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.{}".contains(&b));
        if !ok {
            p.error(
                g.span(),
                format!("`updates.group` `{}` is not an update group", g.get_ref()),
                "use a channel (stable, beta, alpha, lts) or a Nebraska group name or ID",
            );
            valid = false;
        }
        updates.group = g.into_inner();
    }
    if let Some(s) = server {
        valid &= check_http_url(&s, p);
        updates.server = Some(s.into_inner());
    }
    if let Some(days) = days {
        let mut seen = BTreeSet::new();
        for day in &days {
            let d = day.get_ref().to_ascii_lowercase();
            if !WEEKDAYS.contains(&d.as_str()) {
                p.error(
                    day.span(),
                    format!("`{}` is not a day", day.get_ref()),
                    "write days as sun, mon, tue, wed, thu, fri, sat",
                );
                valid = false;
            } else if !seen.insert(d) {
                p.error(
                    day.span(),
                    format!("`{}` is listed twice", day.get_ref()),
                    "list each day once",
                );
                valid = false;
            }
        }
        if days.is_empty() {
            p.error(
                t_span_of(&days),
                "`updates.reboot_days` is empty, so nodes could never reboot for updates",
                "list at least one day, or set `enabled = false`",
            );
            valid = false;
        }
        updates.reboot_window.days = seen.into_iter().collect();
        updates
            .reboot_window
            .days
            .sort_by_key(|d| WEEKDAYS.iter().position(|w| w == d));
    }
    for (value, slot) in [
        (start, &mut updates.reboot_window.start),
        (end, &mut updates.reboot_window.end),
    ] {
        if let Some(v) = value {
            if !is_clock_time(v.get_ref()) {
                p.error(
                    v.span(),
                    format!("`{}` is not a time of day", v.get_ref()),
                    "write times as HH:MM on a 24-hour clock, e.g. \"02:30\"",
                );
                valid = false;
            }
            *slot = v.into_inner();
        }
    }
    if let Some(tz) = timezone {
        let ok = !tz.get_ref().is_empty()
            && tz
                .get_ref()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
        if !ok {
            p.error(
                tz.span(),
                format!("`{}` is not a time zone", tz.get_ref()),
                "use an IANA name such as \"UTC\" or \"America/Indiana/Indianapolis\"",
            );
            valid = false;
        }
        updates.reboot_window.timezone = tz.into_inner();
    }
    valid.then_some(updates)
}

pub(super) fn t_span_of(days: &[At<String>]) -> Range<usize> {
    days.first().map_or(0..0, |d| d.span())
}

pub(super) fn is_clock_time(text: &str) -> bool {
    let Some((h, m)) = text.split_once(':') else {
        return false;
    };
    let two_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    two_digits(h)
        && two_digits(m)
        && h.parse::<u8>().is_ok_and(|h| h < 24)
        && m.parse::<u8>().is_ok_and(|m| m < 60)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn reboot_windows_are_read_and_checked() {
        let spec = with("[updates]\nreboot_days = [\"sat\", \"sun\"]\nreboot_start = \"02:00\"\nreboot_end = \"05:00\"\n").expect("valid");
        assert!(spec.updates.enabled);
        // In week order, as kured takes them.
        assert_eq!(spec.updates.reboot_window.days, ["sun", "sat"]);
        assert_eq!(spec.updates.reboot_window.start, "02:00");
        let problems = problems("[updates]\nreboot_days = [\"funday\", \"sat\", \"sat\"]\n");
        assert!(
            problems.iter().any(|p| p == "`funday` is not a day"),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p == "`sat` is listed twice"),
            "{problems:?}"
        );
    }
}
