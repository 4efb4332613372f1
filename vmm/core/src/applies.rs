// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Which run options can apply to which mode: one table ([`refusal`]), consulted by
//! [`crate::config::VmConfig::validate`] for every option given a value other than its default
//! (and by the command line for the CPU options, whose defaults it alone knows).
//!
//! An option that cannot change what a VM of the chosen mode does is **refused** (exit 2, one
//! line saying why) instead of being silently ignored: `--inject-pin-failure 1 --stage2 kernel`
//! once exited 0 as if the VM had survived an injected pin failure. The mode is the stage-2
//! path, the VM type, the guest (memtouch, another payload, a Linux kernel), the backing, the
//! fault-in model (`pin`, pKVM-exact, the default; `touch`, a stress model) and the policy.
//! Options that apply in every mode are not in the table: `--kernel`/`--initrd`/`--cmdline`
//! (normal and protected VMs), `--vcpus`, `--timeout`, `--cpus free` (which clap already keeps
//! apart from `--fault-cpu`/`--pin-cpu`), campaign's `--before-run`. Combinations that cannot be built at all (the anon backing
//! under `--stage2 uffd`, protected VMs with userfaultfd options) are refused earlier by
//! `validate` with messages of their own; the table covers what would run but ignore the option.
//!
//! Tests: every option against every mode (`tests::every_option_against_every_mode` here; the
//! integration test `options` runs each injection site, policy, `--noise` and
//! `--fault-ahead` in every mode without this check and finds each refused one without effect
//! and each accepted one with it).

use crate::inject::Site;
use crate::memory::Backing;
use crate::stage2::drain::DrainPolicy;
use crate::stage2::protected::VmType;
use crate::stage2::{FaultIn, Stage2};

/// A run option whose effect depends on the mode (its value other than the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opt {
    /// `--policy` other than `none`.
    Policy,
    /// `--fault-in touch` (the stress model; `pin` is the default).
    FaultInTouch,
    /// `--noise N` (N > 0).
    Noise,
    /// `--prefill P` (P > 0).
    Prefill,
    /// `--fault-ahead K` (K > 0).
    FaultAhead,
    /// memtouch's `--stride`, `--passes`, `--seed`.
    Stride,
    Passes,
    Seed,
    /// `--fault-cpu` / `--pin-cpu` given.
    FaultCpu,
    PinCpu,
    /// `--trace` (the kernel's migrate events and each folio's state before its pin).
    Trace,
    /// `--inject SITE` (and `--inject-pin-failure`: `pin-update`).
    Inject(Site),
}

impl Opt {
    /// Every option the table decides on.
    pub fn all() -> Vec<Opt> {
        let mut v = vec![
            Opt::Policy,
            Opt::FaultInTouch,
            Opt::Noise,
            Opt::Prefill,
            Opt::FaultAhead,
            Opt::Stride,
            Opt::Passes,
            Opt::Seed,
            Opt::FaultCpu,
            Opt::PinCpu,
            Opt::Trace,
        ];
        v.extend(Site::ALL.map(Opt::Inject));
        v
    }

    /// The option as the user wrote it.
    pub fn flag(self) -> String {
        match self {
            Opt::Policy => "--policy".into(),
            Opt::FaultInTouch => "--fault-in touch".into(),
            Opt::Noise => "--noise".into(),
            Opt::Prefill => "--prefill".into(),
            Opt::FaultAhead => "--fault-ahead".into(),
            Opt::Stride => "--stride".into(),
            Opt::Passes => "--passes".into(),
            Opt::Seed => "--seed".into(),
            Opt::FaultCpu => "--fault-cpu".into(),
            Opt::PinCpu => "--pin-cpu".into(),
            Opt::Trace => "--trace".into(),
            Opt::Inject(s) => format!("--inject {}", s.name()),
        }
    }
}

/// What the guest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    Memtouch,
    /// Any other bare payload (hello, spin, crash, the hostile ones).
    OtherPayload,
    /// A Linux kernel (`--kernel`).
    Linux,
}

/// The mode a VM runs in: everything that decides which options can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub stage2: Stage2,
    pub vm_type: VmType,
    pub guest: GuestKind,
    pub backing: Backing,
    pub fault_in: FaultIn,
    pub policy: DrainPolicy,
}

impl Mode {
    /// The mode in the user's words, for messages: `--stage2 kernel`, `--vm-type protected`,
    /// `--guest hello`, `--backing anon`, ...
    pub fn describe(&self, opt: Opt) -> String {
        if self.vm_type == VmType::Protected {
            return "--vm-type protected".into();
        }
        match opt {
            Opt::Stride | Opt::Passes | Opt::Seed => match self.guest {
                GuestKind::Linux => "--kernel".into(),
                _ => "this --guest (only memtouch has a range to touch)".into(),
            },
            Opt::Inject(Site::UffdCopy | Site::UffdZeropage | Site::UffdContinue)
                if matches!(self.stage2, Stage2::Pin | Stage2::Uffd) =>
            {
                format!(
                    "--stage2 {} --backing {} --fault-in {}",
                    self.stage2, self.backing, self.fault_in
                )
            }
            Opt::Inject(Site::Mlock) => format!("--backing {}", self.backing),
            Opt::Inject(Site::Drain)
                if self.stage2 == Stage2::Pin || self.stage2 == Stage2::Eager =>
            {
                format!("--stage2 {} --policy {}", self.stage2, self.policy)
            }
            _ => format!("--stage2 {}", self.stage2),
        }
    }
}

/// Why `opt` cannot apply to `m`, or `None` when it can (the table).
pub fn refusal(opt: Opt, m: &Mode) -> Option<&'static str> {
    use Stage2::{Eager, Kernel, Pin, Uffd};
    let protected = m.vm_type == VmType::Protected;
    let memfd = m.backing != Backing::Anon;
    const NO_PIN: &str = "no long-term pin is taken in this mode";
    const NO_UFFD: &str = "this mode has no userfaultfd, so that call is never made";
    match opt {
        // Drains, the page cache and the pins' explanation only matter to a pin: pinvmm's
        // pins, or KVM's (protected).
        Opt::Policy | Opt::Prefill | Opt::Trace => match m.stage2 {
            _ if protected => None,
            Pin | Eager => None,
            Uffd | Kernel => Some(NO_PIN),
        },
        // The stress model's touch before the pin. --stage2 uffd and eager always touch
        // (it names what they do); KVM's own fault path has no fault-in thread.
        Opt::FaultInTouch => match m.stage2 {
            _ if protected => Some("KVM faults each page in itself when it pins it"),
            Pin | Uffd | Eager => None,
            Kernel => Some("KVM faults every page in itself: no fault-in thread runs"),
        },
        // Written by the resolver between a fault-in and its pin.
        Opt::Noise => match m.stage2 {
            _ if protected => Some("there is no resolver: KVM takes the pins"),
            Pin => None,
            Eager => {
                Some("eager stage 2 resolves no faults, so there is no pin to add noise before")
            }
            Uffd | Kernel => Some(NO_PIN),
        },
        Opt::FaultAhead => match m.stage2 {
            _ if protected => Some("there is no resolver: KVM takes the pins"),
            Pin | Uffd => None,
            Eager => Some("eager stage 2 resolves every page before boot"),
            Kernel => Some("KVM resolves the faults itself, one at a time"),
        },
        Opt::Stride | Opt::Passes | Opt::Seed => match m.guest {
            GuestKind::Memtouch => None,
            GuestKind::OtherPayload => Some("only the memtouch payload reads it"),
            GuestKind::Linux => Some("a Linux guest takes its workload from --cmdline"),
        },
        // The fault-in thread's CPU (the protected loader's); the pin thread's (the vCPUs').
        Opt::FaultCpu => match m.stage2 {
            _ if protected => None,
            Pin | Uffd => None,
            Eager | Kernel => Some("no fault-in thread runs in this mode"),
        },
        Opt::PinCpu => match m.stage2 {
            _ if protected => None,
            Pin => None,
            Uffd => Some("--stage2 uffd takes no pin: it maps on the fault-in thread"),
            Eager | Kernel => Some("no pin thread runs in this mode"),
        },
        Opt::Inject(_) if protected => {
            Some("KVM takes the pins itself: pinvmm makes none of these calls")
        }
        Opt::Inject(site) => match (site, m.stage2) {
            (Site::Mlock, _) if m.backing == Backing::Hugetlb => {
                Some("hugetlb memory is not mlocked (its pages never sit on the LRU)")
            }
            (Site::Mlock | Site::KvmRun, _) => None,
            (Site::UffdRead | Site::UffdWake, Pin | Uffd) => None,
            (Site::UffdCopy, Pin | Uffd) if !memfd => None,
            (Site::UffdCopy, Pin | Uffd) => Some(
                "UFFDIO_COPY fills anon pages; a memfd backing's are mapped with UFFDIO_CONTINUE",
            ),
            (Site::UffdZeropage, Pin) if !memfd && m.fault_in == FaultIn::Pin => None,
            (Site::UffdZeropage, Pin | Uffd) => {
                Some("UFFDIO_ZEROPAGE maps untouched anon pages for --fault-in pin only")
            }
            (Site::UffdContinue, Pin | Uffd) if memfd => None,
            (Site::UffdContinue, Pin | Uffd) => {
                Some("UFFDIO_CONTINUE maps memfd pages; anon pages are filled with UFFDIO_COPY")
            }
            (
                Site::UffdRead
                | Site::UffdCopy
                | Site::UffdZeropage
                | Site::UffdContinue
                | Site::UffdWake,
                _,
            ) => Some(NO_UFFD),
            (Site::PinRegister | Site::PinUpdate, Pin | Eager) => None,
            (Site::PinRegister | Site::PinUpdate, Uffd | Kernel) => Some(NO_PIN),
            // The drains the policy makes: after a fault-in (mlock-drain), before a pin
            // (lru-add-drain), after a failed pin (retry, resolver only).
            (Site::Drain, Uffd | Kernel) => Some(NO_PIN),
            (Site::Drain, _) if m.policy == DrainPolicy::None => Some("--policy none never drains"),
            (Site::Drain, Eager) if m.policy == DrainPolicy::Retry => {
                Some("eager stage 2 does not retry a failed pin, and retry drains only then")
            }
            (Site::Drain, Pin | Eager) => None,
        },
    }
}

/// The options `cfg`-like values give other than their defaults.
#[allow(clippy::too_many_arguments)]
pub fn given(
    policy: DrainPolicy,
    fault_in: FaultIn,
    trace: bool,
    noise: u32,
    prefill: u8,
    fault_ahead: u32,
    touch_changed: [bool; 3],
    sites: impl IntoIterator<Item = Site>,
) -> Vec<Opt> {
    let mut v = Vec::new();
    let flags = [
        (policy != DrainPolicy::None, Opt::Policy),
        (fault_in == FaultIn::Touch, Opt::FaultInTouch),
        (trace, Opt::Trace),
        (noise > 0, Opt::Noise),
        (prefill > 0, Opt::Prefill),
        (fault_ahead > 0, Opt::FaultAhead),
        (touch_changed[0], Opt::Stride),
        (touch_changed[1], Opt::Passes),
        (touch_changed[2], Opt::Seed),
    ];
    v.extend(flags.iter().filter(|(on, _)| *on).map(|(_, o)| *o));
    v.extend(sites.into_iter().map(Opt::Inject));
    v
}

/// The first of `opts` that cannot apply to `m`: (the option, the mode, why).
pub fn first_refused(opts: &[Opt], m: &Mode) -> Option<(String, String, &'static str)> {
    opts.iter()
        .find_map(|&o| refusal(o, m).map(|why| (o.flag(), m.describe(o), why)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every mode `validate` lets through to the table.
    pub fn all_modes() -> Vec<Mode> {
        let mut v = Vec::new();
        for stage2 in Stage2::ALL {
            for guest in [
                GuestKind::Memtouch,
                GuestKind::OtherPayload,
                GuestKind::Linux,
            ] {
                for backing in Backing::ALL {
                    for fault_in in FaultIn::ALL {
                        for policy in DrainPolicy::ALL {
                            v.push(Mode {
                                stage2,
                                vm_type: VmType::Normal,
                                guest,
                                backing,
                                fault_in,
                                policy,
                            });
                        }
                    }
                }
            }
        }
        v
    }

    /// The table's answers hold whatever else the mode is: an option the resolver uses
    /// applies to `--stage2 pin` with every guest, and nothing pin-related applies to
    /// `--stage2 kernel`.
    #[test]
    fn the_table_answers_every_option_in_every_mode() {
        let modes = all_modes();
        for opt in Opt::all() {
            for m in &modes {
                let r = refusal(opt, m);
                if let Some(why) = r {
                    assert!(!why.contains('\n') && !why.is_empty());
                    assert!(!m.describe(opt).is_empty());
                }
                if m.stage2 == Stage2::Kernel {
                    let always = matches!(opt, Opt::Inject(Site::KvmRun))
                        || (opt == Opt::Inject(Site::Mlock) && m.backing != Backing::Hugetlb)
                        || (matches!(opt, Opt::Stride | Opt::Passes | Opt::Seed)
                            && m.guest == GuestKind::Memtouch);
                    assert_eq!(r.is_none(), always, "{opt:?} in {m:?}");
                }
            }
        }
        // The example that started it: a pin failure cannot be injected where no pin is taken.
        let kernel = Mode {
            stage2: Stage2::Kernel,
            ..modes[0]
        };
        assert!(refusal(Opt::Inject(Site::PinUpdate), &kernel).is_some());
    }
}
