//! The embedded backend: VPS records held in memory, loaded from a JSON or
//! TOML file or given directly.

use std::collections::HashMap;
use std::path::Path;

use async_trait::async_trait;
use serde::Deserialize;

use super::{Inventory, InventoryError, Vps, normalize_mac};

/// An inventory held in memory, loaded from a file or given directly.
#[derive(Debug, Default, Clone)]
pub struct MemoryInventory {
    by_mac: HashMap<String, Vps>,
    by_ip: HashMap<String, Vps>,
}

#[derive(Deserialize)]
struct FileFormat {
    vps: Vec<Vps>,
}

impl MemoryInventory {
    pub fn new(entries: impl IntoIterator<Item = Vps>) -> Self {
        let mut inventory = Self::default();
        for vps in entries {
            if !vps.mac.is_empty() {
                inventory
                    .by_mac
                    .insert(normalize_mac(&vps.mac), vps.clone());
            }
            if !vps.ip.is_empty() {
                inventory.by_ip.insert(vps.ip.trim().to_string(), vps);
            }
        }
        inventory
    }

    /// The VPSs with a MAC and no IP yet: those `VPS_ALLOCATE_IPS` asks the
    /// gateway an address for.
    pub fn unaddressed(&self) -> Vec<Vps> {
        let mut list: Vec<Vps> = self
            .by_mac
            .values()
            .filter(|v| v.ip.trim().is_empty())
            .cloned()
            .collect();
        list.sort_by(|a, b| a.vps_id.cmp(&b.vps_id));
        list
    }

    /// Reads a JSON (`{"vps": [...]}` or `[...]`) or TOML (`[[vps]]`) file;
    /// the extension decides, JSON when there is none.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: shown.clone(),
            source,
        })?;
        let entries = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str::<FileFormat>(&text)
                .map_err(|e| InventoryError::Parse {
                    path: shown.clone(),
                    format: "TOML",
                    message: e.to_string(),
                })?
                .vps
        } else {
            serde_json::from_str::<FileFormat>(&text)
                .map(|f| f.vps)
                .or_else(|_| serde_json::from_str::<Vec<Vps>>(&text))
                .map_err(|e| InventoryError::Parse {
                    path: shown.clone(),
                    format: "JSON",
                    message: e.to_string(),
                })?
        };
        if let Some(bad) = entries
            .iter()
            .find(|v| v.vps_id.is_empty() || (v.mac.is_empty() && v.ip.is_empty()))
        {
            return Err(InventoryError::Invalid {
                path: shown,
                message: format!("entry {bad:?} needs a vps_id and a mac or an ip"),
            });
        }
        Ok(Self::new(entries))
    }

    /// The built-in sample, so `vps-service` runs out of the box.
    pub fn sample() -> Self {
        let vps = |id: &str, org: &str, mac: &str, ip: &str| Vps {
            vps_id: id.into(),
            organization_id: org.into(),
            mac: mac.into(),
            ip: ip.into(),
        };
        Self::new([
            vps(
                "vps-sample-1",
                "org-sample",
                "52:54:00:00:00:01",
                "10.0.0.11",
            ),
            vps(
                "vps-sample-2",
                "org-sample",
                "52:54:00:00:00:02",
                "10.0.0.12",
            ),
            vps(
                "vps-sample-3",
                "org-other",
                "52:54:00:00:00:03",
                "10.0.0.13",
            ),
        ])
    }

    pub fn len(&self) -> usize {
        self.by_mac.len().max(self.by_ip.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Inventory for MemoryInventory {
    async fn find_by_lease(&self, ip: &str, mac: &str) -> Result<Option<Vps>, InventoryError> {
        Ok(self
            .by_mac
            .get(&normalize_mac(mac))
            .or_else(|| self.by_ip.get(ip.trim()))
            .cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn looks_up_by_mac_then_ip() {
        let inv = MemoryInventory::sample();
        let by_mac = inv
            .find_by_lease("1.2.3.4", "52-54-00-00-00-02")
            .await
            .unwrap();
        assert_eq!(by_mac.unwrap().vps_id, "vps-sample-2");
        let by_ip = inv
            .find_by_lease("10.0.0.13", "aa:aa:aa:aa:aa:aa")
            .await
            .unwrap();
        assert_eq!(by_ip.unwrap().vps_id, "vps-sample-3");
        assert!(inv.find_by_lease("9.9.9.9", "").await.unwrap().is_none());
    }

    #[test]
    fn loads_json_and_toml_and_reports_bad_files() {
        let dir = std::env::temp_dir().join(format!("gatemesh-inv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("inv.json");
        std::fs::write(&json, r#"{"vps":[{"vps_id":"v1","organization_id":"o","mac":"AA:BB:CC:00:00:01","ip":"10.1.0.1"}]}"#).unwrap();
        assert_eq!(MemoryInventory::load(&json).unwrap().len(), 1);
        let toml = dir.join("inv.toml");
        std::fs::write(
            &toml,
            "[[vps]]\nvps_id = \"v2\"\norganization_id = \"o\"\nmac = \"\"\nip = \"10.1.0.2\"\n",
        )
        .unwrap();
        assert_eq!(MemoryInventory::load(&toml).unwrap().len(), 1);
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        let e = MemoryInventory::load(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("JSON"), "{e}");
        let missing = MemoryInventory::load(&dir.join("nope.json"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read"), "{missing}");
        let empty_id = dir.join("empty.json");
        std::fs::write(
            &empty_id,
            r#"[{"vps_id":"","organization_id":"o","mac":"a","ip":""}]"#,
        )
        .unwrap();
        assert!(MemoryInventory::load(&empty_id).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
