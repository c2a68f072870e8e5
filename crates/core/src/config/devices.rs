//! Where groups may run and what each device may hold, from the configuration and the devices
//! the engine has: each device's byte budget and the groups pinned to devices.

use std::collections::BTreeMap;

use serde::Serialize;

use super::value::{at, index};
use super::{Config, Report};
use crate::bytes::ByteSize;
use crate::engine::DeviceInfo;
use crate::residency::DeviceId;

const GIB: u64 = 1 << 30;

/// Rule: a device whose budget is not configured may use the free bytes its driver reports,
/// less a margin for the driver's own allocations and other processes: the larger of 1 GiB and
/// 10 % of the free bytes.
pub fn default_device_budget(free: u64) -> u64 {
    free.saturating_sub(GIB.max(free / 10))
}

/// Each device's budget and the groups pinned to devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Budgets of devices that differ from `Budgets::device`; a device not listed has that.
    pub device_budgets: BTreeMap<DeviceId, u64>,
    /// Groups pinned to devices (a group's `devices`); a group not listed runs on any device.
    pub pins: BTreeMap<String, Vec<DeviceId>>,
}

impl Placement {
    /// The placement of `config` on `devices`. `settings.device_budget`, when set, is every
    /// device's budget; when unset, a device whose free bytes the driver reports gets
    /// [`default_device_budget`] of them, and one without (the CPU) keeps `Budgets::device`.
    /// A group pinned to a device the engine does not have is an error at its path.
    pub fn resolve(config: &Config, devices: &[DeviceInfo]) -> Result<Placement, Report> {
        let mut report = Report::default();
        let mut placement = Placement::default();
        for (i, g) in config.groups.iter().enumerate() {
            let Some(pins) = &g.devices else {
                continue;
            };
            let path = at(&index("model_groups", i), "devices");
            for (j, d) in pins.iter().enumerate() {
                if !devices.iter().any(|info| info.id == *d) {
                    report.error(
                        index(&path, j),
                        format!(
                            "{d} does not exist: this machine's devices are {}; pin the group \
                             to those, or remove `devices` to let it run on any",
                            names(devices)
                        ),
                    );
                }
            }
            placement.pins.insert(g.id.clone(), pins.clone());
        }
        if config.settings.device_budget.is_none() {
            for info in devices {
                if let Some(free) = info.free_bytes {
                    placement
                        .device_budgets
                        .insert(info.id, default_device_budget(free));
                }
            }
        }
        if report.has_errors() {
            Err(report)
        } else {
            Ok(placement)
        }
    }

    /// The groups allowed on `device`: every group not pinned, and those pinned there.
    pub fn allows(&self, group: &str, device: DeviceId) -> bool {
        self.pins
            .get(group)
            .is_none_or(|devices| devices.contains(&device))
    }
}

/// `0 (cpu)` or `0 (cuda:0), 1 (cuda:1)`, with their memory where known.
fn names(devices: &[DeviceInfo]) -> String {
    let list: Vec<String> = devices
        .iter()
        .map(|d| match d.total_bytes {
            Some(t) => format!("{} ({}, {})", d.id.0, d.name, ByteSize(t)),
            None => format!("{} ({})", d.id.0, d.name),
        })
        .collect();
    if list.is_empty() {
        "(none)".into()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn gpus(n: u16, free: u64) -> Vec<DeviceInfo> {
        (0..n)
            .map(|i| DeviceInfo {
                id: DeviceId(i),
                name: format!("cuda:{i}"),
                total_bytes: Some(free + GIB),
                free_bytes: Some(free),
            })
            .collect()
    }

    fn config(devices: &str, budget: &str) -> Config {
        let text = format!(
            r#"{{"model_groups": [
                {{"group_id": "a", "group_name": "A", "base_model_path": "a.gguf", "models": []}},
                {{"group_id": "b", "group_name": "B", "base_model_path": "b.gguf",
                  "devices": {devices}, "models": []}}],
               "settings": {{{budget}}}}}"#
        );
        let (config, report) = parse(&text);
        config.unwrap_or_else(|| panic!("{report}"))
    }

    #[test]
    fn the_default_budget_leaves_a_gibibyte_or_a_tenth_of_the_free_bytes() {
        assert_eq!(default_device_budget(80 * GIB), 72 * GIB);
        assert_eq!(default_device_budget(4 * GIB), 3 * GIB);
        assert_eq!(default_device_budget(GIB / 2), 0);
    }

    #[test]
    fn pins_name_existing_devices_and_budgets_come_from_the_driver() {
        let p = Placement::resolve(&config("[1]", ""), &gpus(2, 40 * GIB)).unwrap();
        assert_eq!(p.pins["b"], [DeviceId(1)]);
        assert!(p.allows("a", DeviceId(0)) && p.allows("b", DeviceId(1)));
        assert!(!p.allows("b", DeviceId(0)));
        assert_eq!(p.device_budgets[&DeviceId(0)], 36 * GIB);

        let set = config("[1]", r#""device_budget": "10GiB""#);
        let p = Placement::resolve(&set, &gpus(2, 40 * GIB)).unwrap();
        assert!(p.device_budgets.is_empty(), "the configured budget applies");
    }

    #[test]
    fn a_pin_to_a_device_the_engine_lacks_is_an_error_at_its_path() {
        let report = Placement::resolve(&config("[0, 3]", ""), &gpus(2, GIB)).unwrap_err();
        let errors: Vec<String> = report.errors().map(|e| e.path.clone()).collect();
        assert_eq!(errors, ["model_groups[1].devices[1]"]);
        let text = report.to_string();
        assert!(
            text.contains("device 3 does not exist") && text.contains("1 (cuda:1, 2.0 GiB)"),
            "{text}"
        );
    }

    #[test]
    fn bad_device_lists_are_errors_naming_the_field() {
        for (devices, want) in [
            ("[]", "model_groups[0].devices: the list is empty"),
            (
                "[0, 0]",
                "model_groups[0].devices[1]: device 0 is listed twice",
            ),
            (
                "[-1]",
                "model_groups[0].devices[0]: expected a device number",
            ),
            (
                "\"gpu\"",
                "model_groups[0].devices: expected a list of device numbers",
            ),
        ] {
            let text = format!(
                r#"{{"model_groups": [{{"group_id": "b", "group_name": "B",
                   "base_model_path": "b.gguf", "devices": {devices}, "models": []}}]}}"#
            );
            let (config, report) = parse(&text);
            assert!(config.is_none(), "{devices}");
            assert!(report.to_string().contains(want), "{devices}: {report}");
        }
    }
}
