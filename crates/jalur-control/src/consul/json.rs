//! The parts of Consul's HTTP API answers the registry reads, as typed structs: the catalog's
//! service list and the health endpoint's entries. An answer of the wrong shape is an error for
//! the whole query (the last known instances stay); one unreadable entry is a [`JsonError`] for
//! that entry alone, which the registry logs and counts, and the other entries still count.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// `/v1/catalog/services`: service name -> tags (Consul may send `null` for none).
pub type Catalog = BTreeMap<String, Option<Vec<String>>>;

/// One entry of `/v1/health/service/:name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry {
    #[serde(default)]
    pub node: Node,
    pub service: Service,
    #[serde(default, deserialize_with = "null_as_default")]
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub datacenter: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(default)]
    pub address: String,
    pub port: u16,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub weights: Option<Weights>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    #[serde(default = "one")]
    pub passing: u32,
    #[serde(default = "one")]
    pub warning: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Check {
    pub status: String,
}

/// What could not be read, and where.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("Consul's /v1/catalog/services answer is not a map of service names to tags: {0}")]
    Catalog(serde_json::Error),
    #[error("Consul's health answer for {service} is not a list of entries: {source}")]
    Health {
        service: String,
        source: serde_json::Error,
    },
    #[error("Consul's health entry {index} for {service} skipped: {reason}")]
    Entry {
        service: String,
        index: usize,
        reason: String,
    },
}

impl HealthEntry {
    /// The instance's address: its service address, else its node's (as Consul's DNS does).
    pub fn address(&self) -> Option<&str> {
        [&self.service.address, &self.node.address]
            .into_iter()
            .find(|a| !a.is_empty())
            .map(String::as_str)
    }
}

pub fn catalog(answer: Value) -> Result<Catalog, JsonError> {
    serde_json::from_value(answer).map_err(JsonError::Catalog)
}

/// Every readable entry, and an error for each one that is not. Consul always answers a list, so
/// anything else (an empty body included) is an error for the whole answer.
pub fn health(
    service: &str,
    answer: Value,
) -> Result<(Vec<HealthEntry>, Vec<JsonError>), JsonError> {
    let entries: Vec<Value> =
        serde_json::from_value(answer).map_err(|source| JsonError::Health {
            service: service.to_string(),
            source,
        })?;
    let mut good = Vec::with_capacity(entries.len());
    let mut bad = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let reason = match serde_json::from_value::<HealthEntry>(entry) {
            Ok(e) if e.address().is_some() => {
                good.push(e);
                continue;
            }
            Ok(_) => "neither Service.Address nor Node.Address is set".to_string(),
            Err(e) => e.to_string(),
        };
        bad.push(JsonError::Entry {
            service: service.to_string(),
            index,
            reason,
        });
    }
    Ok((good, bad))
}

fn one() -> u32 {
    1
}

/// Consul writes `null` for an empty list or map.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_consuls_shapes_nulls_included() {
        let cat = catalog(json!({"consul": [], "payments": ["v1", "proto=grpc"], "x": null}))
            .expect("catalog");
        assert_eq!(
            cat["payments"],
            Some(vec!["v1".into(), "proto=grpc".into()])
        );
        assert_eq!(cat["x"], None);
        let (entries, errors) = health(
            "payments",
            json!([{
                "Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"},
                "Service": {"ID": "p-1", "Service": "payments", "Address": "", "Port": 8080,
                            "Tags": null, "Meta": null, "Weights": {"Passing": 3, "Warning": 1}},
                "Checks": [{"Status": "passing"}, {"Status": "warning", "Output": "slow"}]
            }]),
        )
        .expect("health");
        assert!(errors.is_empty(), "{errors:?}");
        let e = &entries[0];
        assert_eq!(e.address(), Some("10.0.0.1"));
        assert_eq!(e.service.port, 8080);
        assert_eq!(e.service.weights.map(|w| w.passing), Some(3));
        assert_eq!(e.checks.len(), 2);
        assert_eq!(e.node.datacenter, "dc1");
        assert!(health("x", Value::Null).is_err_and(|e| e.to_string().contains("x")));
    }

    #[test]
    fn an_unreadable_entry_is_an_error_naming_it_and_the_rest_still_count() {
        let (entries, errors) = health(
            "payments",
            json!([
                {"Service": {"ID": "a", "Address": "10.0.0.1", "Port": 80}},
                {"Service": {"ID": "b", "Address": "10.0.0.2", "Port": "eighty"}},
                {"Service": {"ID": "c", "Port": 80}},
                {"Service": {"ID": "d", "Address": "10.0.0.4", "Port": 70000}},
            ]),
        )
        .expect("a list");
        assert_eq!(entries.len(), 1);
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(shown[0].contains("entry 1 for payments"), "{shown:?}");
        assert!(shown[1].contains("Address"), "{shown:?}");
        assert!(shown[2].contains("entry 3"), "{shown:?}");
        assert!(catalog(json!(["payments"])).is_err());
    }
}
