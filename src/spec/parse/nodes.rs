//! `[control_plane]` and `[[worker_pools]]`: counts, flavors, boot volumes, labels and taints.

use super::*;

pub(super) fn read_control_plane(
    mut t: Table<'_, '_>,
    p: &mut Problems,
) -> Option<ControlPlaneSpec> {
    let count = t.integer("count", p);
    let endpoint = t.string("api_endpoint", p);
    let flavor = read_flavor(&mut t, p);
    let boot_volume_gb = read_boot_volume(&mut t, p);
    t.finish(p);
    let count = match count {
        None => Some(1),
        Some(c) if matches!(*c.get_ref(), 1 | 3 | 5) => Some(*c.get_ref() as u32),
        Some(c) => {
            p.error(
                c.span(),
                format!("`control_plane.count` is {}; it must be 1, 3 or 5", c.get_ref()),
                "etcd keeps working while a majority of its members do: 3 survive the loss of one, 5 of two; an even count survives no more than one fewer would",
            );
            None
        }
    };
    let api_endpoint_given = endpoint.is_some();
    let api_endpoint = match (count, endpoint) {
        (Some(1), None) => Some(ApiEndpointKind::ControlPlane),
        (Some(_), None) => Some(ApiEndpointKind::Vip),
        (None, _) => None,
        (Some(count), Some(e)) => match (count, e.get_ref().as_str()) {
            (1, "vip" | "load-balancer") => {
                p.error(
                    e.span(),
                    format!("`control_plane.api_endpoint` is `{}` with one control plane", e.get_ref()),
                    "the API's address is the control plane's own; an endpoint of its own needs `count = 3` or `5`",
                );
                None
            }
            (_, "vip") => Some(ApiEndpointKind::Vip),
            (_, "load-balancer") => Some(ApiEndpointKind::LoadBalancer),
            (_, other) => {
                p.error(
                    e.span(),
                    format!("`control_plane.api_endpoint` `{other}` is not known"),
                    "use `load-balancer` or `vip`, or leave it out: flatstack chooses a load balancer where the cloud has Octavia",
                );
                None
            }
        },
    };
    Some(ControlPlaneSpec {
        count: count?,
        flavor: flavor?,
        boot_volume_gb: boot_volume_gb?,
        api_endpoint: api_endpoint?,
        api_endpoint_given,
    })
}

pub(super) fn read_flavor(t: &mut Table<'_, '_>, p: &mut Problems) -> Option<String> {
    match t.string("flavor", p) {
        Some(f) if f.get_ref().trim().is_empty() => {
            p.error(
                f.span(),
                format!("`{}` is empty", t.key_path("flavor")),
                "name a Nova flavor, e.g. `m3.small`",
            );
            None
        }
        Some(f) => Some(f.into_inner()),
        None => {
            t.missing(
                "flavor",
                "name a Nova flavor, e.g. `flavor = \"m3.small\"`",
                p,
            );
            None
        }
    }
}

/// `Some(None)` when absent, `None` when invalid.
pub(super) fn read_boot_volume(t: &mut Table<'_, '_>, p: &mut Problems) -> Option<Option<u32>> {
    match t.integer("boot_volume_gb", p) {
        None => Some(None),
        Some(gb) if (MIN_BOOT_VOLUME_GB..=16_384).contains(gb.get_ref()) => {
            Some(u32::try_from(*gb.get_ref()).ok())
        }
        Some(gb) => {
            p.error(
                gb.span(),
                format!("`{}` is {}", t.key_path("boot_volume_gb"), gb.get_ref()),
                format!("a boot volume holds {MIN_BOOT_VOLUME_GB} to 16384 GB; leave it out to boot from the flavor's disk"),
            );
            None
        }
    }
}

pub(super) fn read_worker_pool(mut t: Table<'_, '_>, p: &mut Problems) -> Option<WorkerPool> {
    let name = t.string("name", p);
    let count = t.integer("count", p);
    let flavor = read_flavor(&mut t, p);
    let boot_volume_gb = read_boot_volume(&mut t, p);
    let labels = t.string_map("labels", p).unwrap_or_default();
    let taints = t.strings("taints", p).unwrap_or_default();
    let max_surge = match t.integer("max_surge", p) {
        None => Some(1),
        Some(s) if (1..=MAX_POOL_COUNT).contains(s.get_ref()) => u32::try_from(*s.get_ref()).ok(),
        Some(s) => {
            p.error(
                s.span(),
                format!("`{}` is {}", t.key_path("max_surge"), s.get_ref()),
                format!("a replacement makes 1 to {MAX_POOL_COUNT} new nodes at a time"),
            );
            None
        }
    };
    let upgrade = match t.string("upgrade", p) {
        None => Some(PoolUpgrade::InPlace),
        Some(u) => match u.get_ref().as_str() {
            "in-place" => Some(PoolUpgrade::InPlace),
            "replace" => Some(PoolUpgrade::Replace),
            other => {
                p.error(
                    u.span(),
                    format!("`{}` is `{other}`", t.key_path("upgrade")),
                    "use \"in-place\" (each node upgraded where it runs) or \"replace\" (new nodes at the new release, then the old ones drained and deleted)",
                );
                None
            }
        },
    };
    let label_path = t.key_path("labels");
    let taint_path = t.key_path("taints");
    match &name {
        Some(n) => check_dns_label(n, &t.key_path("name"), p),
        None => t.missing("name", "give the pool a name, e.g. `name = \"default\"`", p),
    }
    let count = match count {
        None => {
            t.missing("count", "say how many workers, e.g. `count = 2`", p);
            None
        }
        Some(c) if (0..=MAX_POOL_COUNT).contains(c.get_ref()) => u32::try_from(*c.get_ref()).ok(),
        Some(c) => {
            p.error(
                c.span(),
                format!("`{}` is {}", t.key_path("count"), c.get_ref()),
                format!("a pool holds 0 to {MAX_POOL_COUNT} workers"),
            );
            None
        }
    };
    t.finish(p);

    let mut label_map = BTreeMap::new();
    for (key, value) in labels {
        check_label_key(&key, &label_path, p);
        check_label_value(&value, &label_path, p);
        label_map.insert(key.into_inner(), value.into_inner());
    }
    let taints: Vec<Taint> = taints
        .iter()
        .filter_map(|taint| parse_taint(taint, &taint_path, p))
        .collect();
    Some(WorkerPool {
        name: name?.into_inner(),
        count: count?,
        flavor: flavor?,
        boot_volume_gb: boot_volume_gb?,
        max_surge: max_surge?,
        labels: label_map,
        taints,
        upgrade: upgrade?,
    })
}

/// Label keys: optional DNS-subdomain prefix, `/`, and a name of at most 63 characters.
pub(super) fn check_label_key(key: &At<String>, path: &str, p: &mut Problems) {
    let k = key.get_ref();
    let (prefix, name) = match k.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, k.as_str()),
    };
    let prefix_ok = prefix.is_none_or(|pre| {
        !pre.is_empty()
            && pre.len() <= 253
            && pre.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    });
    if !prefix_ok || !is_label_name(name) || name.is_empty() {
        p.error(
            key.span(),
            format!("`{k}` in `{path}` is not a valid label key"),
            "keys are an optional DNS prefix and '/', then up to 63 letters, digits, '-', '_' or '.'",
        );
        return;
    }
    if let Some(prefix) = prefix {
        let reserved = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
        let allowed = ["kubelet.kubernetes.io", "node.kubernetes.io"]
            .iter()
            .any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")));
        if (reserved("kubernetes.io") || reserved("k8s.io")) && !allowed {
            p.error(
                key.span(),
                format!("a node may not set the label `{k}` on itself"),
                "the NodeRestriction admission plugin forbids kubernetes.io and k8s.io labels other than node.kubernetes.io/ and kubelet.kubernetes.io/; use your own prefix",
            );
        }
    }
}

pub(super) fn check_label_value(value: &At<String>, path: &str, p: &mut Problems) {
    let v = value.get_ref();
    if !v.is_empty() && !is_label_name(v) {
        p.error(
            value.span(),
            format!("`{v}` in `{path}` is not a valid label value"),
            "values are empty or up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
        );
    }
}

pub(super) fn is_label_name(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `key=value:Effect` or `key:Effect`, as `kubectl taint` writes them.
pub(super) fn parse_taint(text: &At<String>, path: &str, p: &mut Problems) -> Option<Taint> {
    let s = text.get_ref();
    let bad = |p: &mut Problems, why: String| {
        p.error(
            text.span(),
            format!("`{s}` in `{path}` {why}"),
            "write taints as key=value:Effect or key:Effect, Effect one of NoSchedule, PreferNoSchedule, NoExecute",
        );
    };
    let Some((key_value, effect)) = s.rsplit_once(':') else {
        bad(p, "has no effect".to_string());
        return None;
    };
    let effect = match effect {
        "NoSchedule" => TaintEffect::NoSchedule,
        "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
        "NoExecute" => TaintEffect::NoExecute,
        other => {
            bad(p, format!("has the unknown effect `{other}`"));
            return None;
        }
    };
    let (key, value) = match key_value.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (key_value, None),
    };
    let mut probe = Problems::default();
    check_label_key(&At::new(text.span(), key.to_string()), path, &mut probe);
    let value_ok = value.is_none_or(|v| v.is_empty() || is_label_name(v));
    if !probe.is_empty() || !value_ok {
        bad(p, "is not a valid taint".to_string());
        return None;
    }
    Some(Taint {
        key: key.to_string(),
        value: value.map(str::to_string),
        effect,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use crate::spec::ApiEndpointKind;

    #[test]
    fn control_planes_are_one_three_or_five_and_more_than_one_take_an_endpoint() {
        let one = with("").expect("valid").control_plane;
        assert_eq!(
            (one.count, one.api_endpoint),
            (1, ApiEndpointKind::ControlPlane)
        );
        for count in [3, 5] {
            let many = with(&format!("count = {count}\n")).expect("valid");
            assert_eq!(many.control_plane.count, count);
            assert_eq!(many.control_plane.api_endpoint, ApiEndpointKind::Vip);
            assert_eq!(many.nodes().len(), count as usize);
        }
        assert_eq!(
            with("count = 3\napi_endpoint = \"vip\"\n")
                .expect("valid")
                .control_plane
                .api_endpoint,
            ApiEndpointKind::Vip
        );
        for count in [0, 2, 4, 7] {
            assert_eq!(
                problems(&format!("count = {count}\n")),
                [format!(
                    "`control_plane.count` is {count}; it must be 1, 3 or 5"
                )]
            );
        }
        assert_eq!(
            problems("api_endpoint = \"vip\"\n"),
            ["`control_plane.api_endpoint` is `vip` with one control plane"]
        );
        let chosen = with("count = 3\napi_endpoint = \"load-balancer\"\n").expect("valid");
        assert_eq!(
            (
                chosen.control_plane.api_endpoint,
                chosen.control_plane.api_endpoint_given
            ),
            (ApiEndpointKind::LoadBalancer, true)
        );
        assert!(
            !with("count = 3\n")
                .expect("valid")
                .control_plane
                .api_endpoint_given
        );
        assert_eq!(
            problems("count = 3\napi_endpoint = \"dns\"\n"),
            ["`control_plane.api_endpoint` `dns` is not known"]
        );
    }

    #[test]
    fn worker_pools_are_read_with_labels_and_taints() {
        let spec = with(
            "[[worker_pools]]\nname = \"gpu\"\ncount = 2\nflavor = \"g3.large\"\nlabels = { \"example.org/gpu\" = \"a100\" }\ntaints = [\"nvidia.com/gpu=true:NoSchedule\"]\n",
        )
        .expect("valid");
        let pool = &spec.worker_pools[0];
        assert_eq!(
            (pool.name.as_str(), pool.count, pool.flavor.as_str()),
            ("gpu", 2, "g3.large")
        );
        assert_eq!(pool.taints.len(), 1);
        assert_eq!(spec.nodes().len(), 3);
    }

    #[test]
    fn boot_volumes_and_labels_are_checked() {
        let small = problems(
            "[[worker_pools]]\nname = \"w\"\ncount = 1\nflavor = \"f\"\nboot_volume_gb = 5\n",
        );
        assert!(small[0].contains("boot_volume_gb` is 5"), "{small:?}");
        let label = problems(
            "[[worker_pools]]\nname = \"w\"\ncount = 1\nflavor = \"f\"\nlabels = { \"-bad\" = \"x\" }\n",
        );
        assert!(label[0].contains("is not a valid label key"), "{label:?}");
    }

    #[test]
    fn a_pool_upgrades_in_place_unless_it_says_replace() {
        let pool = "[[worker_pools]]\nname = \"gpu\"\ncount = 1\nflavor = \"g3.large\"\n";
        assert_eq!(
            with(pool).expect("valid").worker_pools[0].upgrade,
            crate::spec::PoolUpgrade::InPlace
        );
        let replace = with(&format!("{pool}upgrade = \"replace\"\n")).expect("valid");
        assert_eq!(
            replace.worker_pools[0].upgrade,
            crate::spec::PoolUpgrade::Replace
        );
        let odd = problems(&format!("{pool}upgrade = \"rolling\"\n"));
        assert!(odd[0].contains("upgrade` is `rolling`"), "{odd:?}");
    }

    #[test]
    fn max_surge_is_one_unless_given_and_at_least_one() {
        let pool = "[[worker_pools]]\nname = \"w\"\ncount = 3\nflavor = \"f\"\n";
        assert_eq!(with(pool).expect("valid").worker_pools[0].max_surge, 1);
        let three = with(&format!("{pool}max_surge = 3\n")).expect("valid");
        assert_eq!(three.worker_pools[0].max_surge, 3);
        let zero = problems(&format!("{pool}max_surge = 0\n"));
        assert!(zero[0].contains("max_surge` is 0"), "{zero:?}");
    }
}
