// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Devices of pinvmm. None of them touches KVM: each is driven through [`BusDevice`] with
//! offsets and bytes, so they are unit-testable and fuzzable without /dev/kvm.

pub mod bus;
pub mod cmos;
pub mod i8042;
pub mod serial;
pub mod testdev;

pub use bus::{Bus, BusDevice, BusError, StopRequest};
pub use cmos::CmosDevice;
pub use i8042::I8042Device;
pub use serial::{ConsoleSink, SerialDevice, WatchedLine};
pub use testdev::{GuestReport, TestDevice};
