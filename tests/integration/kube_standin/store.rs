//! How the stand-in stores objects, where flatstack depends on the API server's behaviour.
//! Each rule names the upstream code it follows (kubernetes v1.35):
//!
//! - Server-side apply keeps field ownership per manager
//!   (`staging/src/k8s.io/apiserver/pkg/endpoints/handlers/fieldmanager`, built on
//!   `sigs.k8s.io/structured-merge-diff`): an apply that sets a field another manager owns to
//!   a different value is refused with 409 `Conflict` (structured-merge-diff `merge/update.go`,
//!   message as `merge/conflict.go` words it) unless `force=true`, which takes the field over; the
//!   same value makes the ownership shared; fields a manager applied before and no longer
//!   applies are removed when no other manager owns them; an update (merge patch) takes over
//!   the fields it sets without conflict. Lists are treated as atomic values here (upstream
//!   merges lists with `x-kubernetes-list-type: map` key by key): flatstack applies whole
//!   objects, so a list is always set whole by one manager.
//! - `metadata.uid` and `creationTimestamp` are set once, at creation
//!   (`staging/src/k8s.io/apiserver/pkg/registry/rest/create.go`, `FillObjectMetaSystemFields`).
//! - `metadata.resourceVersion` changes on every write that changes the stored object and
//!   not on a write that changes nothing (`storage/etcd3/store.go` `GuaranteedUpdate` skips the
//!   write when the encoded object is unchanged).
//! - `metadata.generation` starts at 1 and is bumped when anything other than metadata and
//!   status changes (`apiextensions-apiserver/pkg/registry/customresource/strategy.go`
//!   `PrepareForUpdate`; the apps and batch strategies do the same for their spec). Kinds
//!   without a spec (ConfigMap, Secret, ...) get none.
//! - Custom resources are served only once their CustomResourceDefinition exists and has
//!   accepted its names (`apiextensions-apiserver/pkg/apiserver/customresource_handler.go`
//!   `ServeHTTP`; otherwise the request falls through to the not-found handler: a plain-text
//!   `404 page not found`), and the CRD's structural
//!   schema defaults are applied when an object is written
//!   (`apiextensions-apiserver/pkg/apiserver/schema/defaulting/algorithm.go`), so a read
//!   returns fields nobody applied.
//! - A Secret's `stringData` is merged into `data` (base64) and never stored
//!   (`pkg/apis/core/v1/conversion.go`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// A field: the keys from the object's root to a value.
pub type FieldPath = Vec<String>;

/// Who owns which fields of one object, and how they got them.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    /// manager -> (operation, fields)
    pub managers: BTreeMap<String, (Operation, BTreeSet<FieldPath>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

/// A conflict: the other manager, how it got the field, and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub operation: Operation,
    pub field: String,
}

/// The message of the 409 an apply with conflicts gets, worded as structured-merge-diff's
/// `ConflictsFromManagers` prints it: ` using <apiVersion>` only for fields an update set.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    let who = |c: &Conflict| match c.operation {
        Operation::Apply => format!("\"{}\"", c.manager),
        Operation::Update => format!("\"{}\" using v1", c.manager),
    };
    if let [only] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            who(only),
            only.field
        );
    }
    let mut by_manager: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager.entry(who(c)).or_default().push(&c.field);
    }
    let groups: Vec<String> = by_manager
        .iter()
        .map(|(m, fields)| format!("conflicts with {m}:\n- {}", fields.join("\n- ")))
        .collect();
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        groups.join("\n")
    )
}

/// The fields an applied or patched object sets: every leaf (a scalar, a list, or an empty
/// object), leaving out what identifies the object and what only the server writes.
pub fn leaves(object: &Value) -> BTreeMap<FieldPath, Value> {
    let mut out = crate::support::leaf_values(object);
    out.retain(|path, _| !identifying(path));
    out
}

fn identifying(path: &[String]) -> bool {
    let first = path.first().map(String::as_str);
    let second = path.get(1).map(String::as_str);
    matches!(first, Some("apiVersion" | "kind" | "status"))
        || (first == Some("metadata")
            && matches!(
                second,
                Some(
                    "name"
                        | "namespace"
                        | "uid"
                        | "resourceVersion"
                        | "generation"
                        | "creationTimestamp"
                        | "managedFields"
                        | "deletionTimestamp"
                )
            ))
}

pub fn get<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |v, key| v.get(key))
}

fn set(object: &mut Value, path: &[String], value: Value) {
    let mut here = object;
    for key in &path[..path.len().saturating_sub(1)] {
        if !here.get(key).is_some_and(Value::is_object) {
            here[key.as_str()] = json!({});
        }
        here = &mut here[key.as_str()];
    }
    if let Some(last) = path.last() {
        here[last.as_str()] = value;
    }
}

/// Removes the field at `path`, and objects left empty by that, up to the root.
fn remove(object: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut here = &mut *object;
    for key in parents {
        match here.get_mut(key) {
            Some(next) => here = next,
            None => return,
        }
    }
    if let Some(map) = here.as_object_mut() {
        map.remove(last);
    }
    if !parents.is_empty()
        && get(object, parents).is_some_and(|v| v.as_object().is_some_and(Map::is_empty))
    {
        remove(object, parents);
    }
}

/// `.spec.x.y` as the API server prints a field in a conflict.
pub fn dotted(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

impl Ownership {
    /// A server-side apply of `applied` by `manager` onto `current` (`Value::Null` when the
    /// object does not exist yet): the object to store, or the conflicts.
    pub fn apply(
        &mut self,
        current: &Value,
        applied: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, Vec<Conflict>> {
        let wanted = leaves(applied);
        let mut conflicts = Vec::new();
        for (other, (operation, fields)) in self.managers.iter().filter(|(m, _)| *m != manager) {
            for (path, value) in &wanted {
                let held = fields
                    .iter()
                    .any(|f| f == path || f.starts_with(path) || path.starts_with(f));
                if held && get(current, path) != Some(value) {
                    conflicts.push(Conflict {
                        manager: other.clone(),
                        operation: *operation,
                        field: dotted(path),
                    });
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(conflicts);
        }
        // Forced: the fields change hands.
        for (_, (_, fields)) in self.managers.iter_mut().filter(|(m, _)| *m != manager) {
            fields.retain(|f| {
                !wanted.iter().any(|(path, value)| {
                    (f == path || f.starts_with(path) || path.starts_with(f))
                        && get(current, path) != Some(value)
                })
            });
        }
        let mut object = if current.is_null() {
            json!({})
        } else {
            current.clone()
        };
        // What this manager applied before and applies no more goes, unless someone else owns it.
        let before = self
            .managers
            .get(manager)
            .map(|(_, fields)| fields.clone())
            .unwrap_or_default();
        for dropped in before.iter().filter(|f| !wanted.contains_key(*f)) {
            let shared = self
                .managers
                .iter()
                .any(|(m, (_, fields))| m != manager && fields.contains(dropped));
            if !shared {
                remove(&mut object, dropped);
            }
        }
        for key in ["apiVersion", "kind"] {
            object[key] = applied[key].clone();
        }
        for key in ["name", "namespace"] {
            if let Some(value) = applied["metadata"].get(key) {
                object["metadata"][key] = value.clone();
            }
        }
        for (path, value) in &wanted {
            set(&mut object, path, value.clone());
        }
        self.managers.insert(
            manager.to_string(),
            (Operation::Apply, wanted.into_keys().collect()),
        );
        self.managers.retain(|_, (_, fields)| !fields.is_empty());
        Ok(object)
    }

    /// A merge patch (an update) by `manager`: it takes over every field it sets, from anyone.
    pub fn update(&mut self, patched: &Value, patch: &Value, manager: &str) {
        let set_fields: BTreeSet<FieldPath> = leaves(patch)
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(p, _)| p)
            .collect();
        for (_, (_, fields)) in self.managers.iter_mut() {
            fields.retain(|f| {
                !set_fields
                    .iter()
                    .any(|s| f == s || f.starts_with(s) || s.starts_with(f))
            });
        }
        let entry = self
            .managers
            .entry(manager.to_string())
            .or_insert((Operation::Update, BTreeSet::new()));
        entry
            .1
            .extend(set_fields.into_iter().filter(|f| get(patched, f).is_some()));
        self.managers.retain(|_, (_, fields)| !fields.is_empty());
    }

    /// `metadata.managedFields` as the API server reports it (FieldsV1: `f:<key>` maps, `{}`
    /// at each owned field).
    pub fn managed_fields(&self, api_version: &Value) -> Value {
        let entries: Vec<Value> = self
            .managers
            .iter()
            .map(|(manager, (operation, fields))| {
                let mut tree = json!({});
                for field in fields {
                    let keys: Vec<String> = field.iter().map(|k| format!("f:{k}")).collect();
                    set(&mut tree, &keys, json!({}));
                }
                json!({
                    "manager": manager,
                    "operation": match operation { Operation::Apply => "Apply", Operation::Update => "Update" },
                    "apiVersion": api_version,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": tree,
                })
            })
            .collect();
        Value::Array(entries)
    }
}

/// Everything but metadata and status: what a generation counts.
fn desired_state(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    copy
}

/// Fills the server-written metadata of `object`, about to replace `previous`.
pub fn stamp(object: &mut Value, previous: &Value, next_uid: &mut u64, next_version: &mut u64) {
    let meta = &previous["metadata"];
    if previous.is_null() {
        *next_uid += 1;
        object["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", next_uid));
        object["metadata"]["creationTimestamp"] = json!("2026-12-02T00:00:00Z");
        if object.get("spec").is_some() {
            object["metadata"]["generation"] = json!(1);
        }
    } else {
        for key in [
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
        ] {
            match meta.get(key) {
                Some(value) => object["metadata"][key] = value.clone(),
                None => {
                    if let Some(map) = object["metadata"].as_object_mut() {
                        map.remove(key);
                    }
                }
            }
        }
        if desired_state(object) != desired_state(previous)
            && let Some(generation) = meta["generation"].as_i64()
        {
            object["metadata"]["generation"] = json!(generation + 1);
        }
    }
    if object != previous {
        *next_version += 1;
        object["metadata"]["resourceVersion"] = json!(next_version.to_string());
    }
}

/// Applies the `default`s of a structural schema to `value`, where fields are absent.
pub fn apply_defaults(value: &mut Value, schema: &Value) {
    let Some(properties) = schema["properties"].as_object() else {
        if let (Some(items), Some(list)) = (schema.get("items"), value.as_array_mut()) {
            for item in list {
                apply_defaults(item, items);
            }
        }
        return;
    };
    let Some(object) = value.as_object_mut() else {
        return;
    };
    for (key, property) in properties {
        if !object.contains_key(key)
            && let Some(default) = property.get("default")
        {
            object.insert(key.clone(), default.clone());
        }
        if let Some(child) = object.get_mut(key) {
            apply_defaults(child, property);
        }
    }
}
