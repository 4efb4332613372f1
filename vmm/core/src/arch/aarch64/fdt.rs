// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The flattened device tree a Linux guest boots with (not used by the bare payloads).
//!
//! It describes what [`super::layout`] places: the vCPUs (PSCI 0.2 over HVC), RAM, the GICv3,
//! the architected timer, the 16550 UART (ns16550a, byte registers) and `/chosen` (command
//! line, console, initrd). Node shapes follow Firecracker's and QEMU `virt`'s trees.

use vm_fdt::{FdtWriter, FdtWriterNode};

use super::gic::NR_IRQS;
use super::layout::{
    DEVICE_WINDOW, GIC_DIST, GIC_DIST_SIZE, GIC_REDIST, RAM_START, SERIAL_BASE, SERIAL_SPI,
    redist_size,
};

/// Largest device tree Linux accepts (arm64 booting.rst).
pub const FDT_MAX: u64 = 2 << 20;

const PHANDLE_GIC: u32 = 1;
/// Interrupt specifier cells (GIC binding): type, number, flags.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_TYPE_EDGE_RISING: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// Architected timer PPIs: secure phys, non-secure phys, virtual, hypervisor phys.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
/// vGIC maintenance interrupt (PPI 9).
const GIC_MAINT_PPI: u32 = 9;
/// UART input clock (the 16550's classic 1.8432 MHz).
const UART_CLOCK: u32 = 1_843_200;

/// Failures building the device tree.
#[derive(Debug, thiserror::Error)]
pub enum FdtError {
    #[error("cannot write the device tree: {0}")]
    Write(#[from] vm_fdt::Error),
    #[error("the device tree is {len} bytes, more than the {FDT_MAX}-byte limit")]
    TooLarge { len: usize },
    #[error("the initrd ({start:#x}, {len} bytes) is not inside guest RAM")]
    Initrd { start: u64, len: u64 },
}

/// What the tree describes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdtConfig {
    pub mem_size: u64,
    pub vcpus: u32,
    pub cmdline: String,
    /// Guest-physical start and length of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
}

/// Where the tree goes: the last 2 MiB of RAM (8-byte aligned, away from a kernel at the start).
pub fn load_addr(mem_size: u64) -> u64 {
    RAM_START + mem_size.saturating_sub(FDT_MAX)
}

fn node<F>(fdt: &mut FdtWriter, name: &str, body: F) -> Result<(), FdtError>
where
    F: FnOnce(&mut FdtWriter) -> Result<(), FdtError>,
{
    let n: FdtWriterNode = fdt.begin_node(name)?;
    body(fdt)?;
    fdt.end_node(n)?;
    Ok(())
}

/// Builds the device tree blob.
pub fn create(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    if let Some((start, len)) = cfg.initrd {
        let ram = RAM_START..RAM_START + cfg.mem_size;
        if !ram.contains(&start) || start.saturating_add(len) > ram.end {
            return Err(FdtError::Initrd { start, len });
        }
    }
    let mut fdt = FdtWriter::new()?;
    node(&mut fdt, "", |f| {
        f.property_string("compatible", "linux,dummy-virt")?;
        f.property_u32("#address-cells", 2)?;
        f.property_u32("#size-cells", 2)?;
        f.property_u32("interrupt-parent", PHANDLE_GIC)?;
        cpus(f, cfg.vcpus)?;
        node(f, &format!("memory@{RAM_START:x}"), |f| {
            f.property_string("device_type", "memory")?;
            f.property_array_u64("reg", &[RAM_START, cfg.mem_size])?;
            Ok(())
        })?;
        chosen(f, cfg)?;
        gic(f, cfg.vcpus)?;
        timer(f)?;
        node(f, "psci", |f| {
            f.property_string("compatible", "arm,psci-0.2")?;
            f.property_string("method", "hvc")?;
            Ok(())
        })?;
        serial(f)
    })?;
    let blob = fdt.finish()?;
    if blob.len() as u64 > FDT_MAX {
        return Err(FdtError::TooLarge { len: blob.len() });
    }
    Ok(blob)
}

fn cpus(f: &mut FdtWriter, vcpus: u32) -> Result<(), FdtError> {
    node(f, "cpus", |f| {
        f.property_u32("#address-cells", 1)?;
        f.property_u32("#size-cells", 0)?;
        for id in 0..vcpus {
            node(f, &format!("cpu@{id:x}"), |f| {
                f.property_string("device_type", "cpu")?;
                f.property_string("compatible", "arm,arm-v8")?;
                f.property_string("enable-method", "psci")?;
                // MPIDR affinity as KVM's reset_mpidr() assigns it: Aff0 = id[3:0], Aff1 = id[11:4].
                f.property_u32("reg", (id & 0xf) | ((id >> 4) << 8))?;
                Ok(())
            })?;
        }
        Ok(())
    })
}

fn chosen(f: &mut FdtWriter, cfg: &FdtConfig) -> Result<(), FdtError> {
    node(f, "chosen", |f| {
        f.property_string("bootargs", &cfg.cmdline)?;
        f.property_string("stdout-path", &format!("/uart@{SERIAL_BASE:x}"))?;
        if let Some((start, len)) = cfg.initrd {
            f.property_u64("linux,initrd-start", start)?;
            f.property_u64("linux,initrd-end", start + len)?;
        }
        Ok(())
    })
}

fn gic(f: &mut FdtWriter, vcpus: u32) -> Result<(), FdtError> {
    node(f, &format!("intc@{GIC_DIST:x}"), |f| {
        f.property_string("compatible", "arm,gic-v3")?;
        f.property_null("interrupt-controller")?;
        f.property_u32("#interrupt-cells", 3)?;
        f.property_array_u64(
            "reg",
            &[
                GIC_DIST,
                GIC_DIST_SIZE,
                GIC_REDIST,
                redist_size(vcpus.into()),
            ],
        )?;
        f.property_u32("#address-cells", 2)?;
        f.property_u32("#size-cells", 2)?;
        f.property_null("ranges")?;
        f.property_array_u32("interrupts", &[GIC_PPI, GIC_MAINT_PPI, IRQ_TYPE_LEVEL_HIGH])?;
        f.property_u32("phandle", PHANDLE_GIC)?;
        Ok(())
    })
}

fn timer(f: &mut FdtWriter) -> Result<(), FdtError> {
    node(f, "timer", |f| {
        f.property_string("compatible", "arm,armv8-timer")?;
        f.property_null("always-on")?;
        let cells: Vec<u32> = TIMER_PPIS
            .iter()
            .flat_map(|&ppi| [GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH])
            .collect();
        f.property_array_u32("interrupts", &cells)?;
        Ok(())
    })
}

fn serial(f: &mut FdtWriter) -> Result<(), FdtError> {
    const { assert!(SERIAL_SPI + 32 < NR_IRQS) };
    node(f, &format!("uart@{SERIAL_BASE:x}"), |f| {
        f.property_string("compatible", "ns16550a")?;
        f.property_array_u64("reg", &[SERIAL_BASE, DEVICE_WINDOW])?;
        f.property_u32("clock-frequency", UART_CLOCK)?;
        f.property_u32("reg-shift", 0)?;
        f.property_u32("reg-io-width", 1)?;
        f.property_array_u32("interrupts", &[GIC_SPI, SERIAL_SPI, IRQ_TYPE_EDGE_RISING])?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn blob_has_header_and_every_node() {
        let cfg = FdtConfig {
            mem_size: 64 << 20,
            vcpus: 2,
            cmdline: "console=ttyS0 panic=-1".into(),
            initrd: Some((RAM_START + (32 << 20), 1 << 20)),
        };
        let b = create(&cfg).unwrap();
        assert_eq!(be32(&b, 0), 0xd00d_feed);
        assert_eq!(be32(&b, 4) as usize, b.len());
        for s in [
            "linux,dummy-virt",
            "arm,gic-v3",
            "arm,armv8-timer",
            "arm,psci-0.2",
            "ns16550a",
            "console=ttyS0 panic=-1",
            "/uart@9000000",
            "memory@80000000",
            "cpu@1",
            "linux,initrd-start",
        ] {
            assert!(contains(&b, s.as_bytes()), "{s} missing");
        }
        if let Some(path) = std::env::var_os("PINVMM_FDT_DUMP") {
            std::fs::write(path, &b).unwrap();
        }
    }

    #[test]
    fn initrd_outside_ram_is_refused_and_fdt_sits_at_the_top() {
        let cfg = FdtConfig {
            mem_size: 16 << 20,
            vcpus: 1,
            initrd: Some((RAM_START + (15 << 20), 2 << 20)),
            ..Default::default()
        };
        assert!(matches!(create(&cfg), Err(FdtError::Initrd { .. })));
        assert_eq!(load_addr(16 << 20), RAM_START + (14 << 20));
        assert_eq!(load_addr(16 << 20) % 8, 0);
    }
}
