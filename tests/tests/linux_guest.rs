// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Linux guest pieces that need downloaded Debian files but no /dev/kvm:
//! - the guest initramfs (guest/linux/build) boots under plain QEMU TCG on arm64 and amd64 and
//!   its result line verifies on the host (guest/linux/qemu-check; ~10-20 s each once cached);
//! - on x86_64 hosts, a real Debian amd64 bzImage goes through pinvmm's loader
//!   (vmm::arch::load_linux) and lands where the boot protocol says.
//!
//! Where QEMU, apt or the network are missing the tests are skipped LOUDLY (ignored); with
//! PINVMM_REQUIRE_BOARD=1 (.ci/run; the same tools as the arm64 board) that is a failure.
//! PINVMM_SKIP_QEMU_GUEST=1 skips the QEMU boots on purpose.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::ensure;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

const SKIP_ON_PURPOSE: &str = "PINVMM_SKIP_QEMU_GUEST=1";

fn required() -> bool {
    std::env::var("PINVMM_REQUIRE_BOARD").is_ok_and(|v| v == "1")
}

/// Runs `f` if `prepare` succeeds; otherwise a loud skip (or a failure when required).
fn needs<T: 'static>(
    name: &str,
    prepare: impl FnOnce() -> Result<T, String> + Send + 'static,
    f: impl FnOnce(T) -> Result<(), Failed> + Send + 'static,
) -> Trial {
    let n = name.to_owned();
    Trial::ignorable_test(name, move || match prepare() {
        Ok(t) => f(t).map(|()| Completion::Completed),
        // Skipping on purpose wins over PINVMM_REQUIRE_BOARD, as in tests/board.rs.
        Err(why) if required() && why != SKIP_ON_PURPOSE => {
            Err(format!("{n}: required here (PINVMM_REQUIRE_BOARD=1) but {why}").into())
        }
        Err(why) => {
            eprintln!("!!! SKIPPED {n}: {why}");
            Ok(Completion::ignored_with(why))
        }
    })
    .with_kind("linux")
}

/// The kernel qemu-check would boot for `arch` (fetched with apt-get download if needed);
/// with `setup`, QEMU is installed too if missing.
fn kernel(arch: &str, setup: bool) -> Result<PathBuf, String> {
    let out = Command::new(root().join("guest/linux/qemu-check"))
        .args([
            "--arch",
            arch,
            if setup { "--setup" } else { "--print-kernel" },
        ])
        .output()
        .map_err(|e| format!("guest/linux/qemu-check: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot set up QEMU or the Debian {arch} kernel: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn qemu_ready(arch: &'static str) -> impl FnOnce() -> Result<(), String> + Send {
    move || {
        if std::env::var("PINVMM_SKIP_QEMU_GUEST").is_ok_and(|v| v == "1") {
            return Err(SKIP_ON_PURPOSE.into());
        }
        kernel(arch, true).map(|_| ())
    }
}

/// Boots the initramfs under QEMU with a 64 MiB fill and checks qemu-check's verdict.
fn boot_under_qemu(arch: &str) -> Result<(), Failed> {
    let out = Command::new(root().join("guest/linux/qemu-check"))
        .args(["--arch", arch, "--mem", "256", "--timeout", "900"])
        .args(["--append", "pinvmm.fill=64M pinvmm.seed=42"])
        .current_dir(root())
        .output()
        .map_err(|e| format!("guest/linux/qemu-check: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure(out.status.success(), || {
        format!("qemu-check --arch {arch} exited {}:\n{stderr}", out.status)
    })?;
    ensure(
        stdout.contains("verified: 64 MiB filled with seed 42") && stdout.contains("4 forks"),
        || format!("unexpected verdict: {stdout}\n{stderr}"),
    )?;
    println!("{arch}: {}", stdout.trim());
    if let Some(l) = stderr.lines().find(|l| l.contains(": ok: ")) {
        println!("{arch}: {l}");
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
fn debian_bzimage_loads(path: PathBuf) -> Result<(), Failed> {
    use std::io::Write;

    use vmm::Backing;
    use vmm::arch::GpaRange;
    use vmm::memory::GuestMemory;

    let image = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mem = GuestMemory::new(Backing::Shmem, 0, 512 << 20).map_err(|e| e.to_string())?;
    let initrd_path = std::env::temp_dir().join(format!("pinvmm-initrd-{}", std::process::id()));
    let initrd: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    std::fs::File::create(&initrd_path)
        .and_then(|mut f| f.write_all(&initrd))
        .map_err(|e| format!("{}: {e}", initrd_path.display()))?;
    let mut kf = std::fs::File::open(&path).map_err(|e| e.to_string())?;
    let mut rf = std::fs::File::open(&initrd_path).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&initrd_path);
    let cmdline = format!("{} pinvmm.fill=64M", vmm::arch::LINUX_CMDLINE_BASE);
    let boot = vmm::arch::load_linux(&mem, 1, &mut kf, Some(&mut rf), &cmdline)
        .map_err(|e| format!("load_linux({}): {e}", path.display()))?;

    let le = |o: usize, n: usize| {
        image[o..o + n]
            .iter()
            .rev()
            .fold(0u64, |a, &b| (a << 8) | u64::from(b))
    };
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let setup_len = ((setup_sects + 1) * 512) as usize;
    let version = le(0x206, 2);
    let init_size = le(0x260, 4);
    println!(
        "{}: protocol {}.{:02}, {} bytes, init_size {init_size:#x}, pref_address {:#x}",
        path.display(),
        version >> 8,
        version & 0xff,
        image.len(),
        le(0x258, 8)
    );
    println!("loaded: {boot:x?}");
    ensure(boot.entry == 0x10_0200, || {
        format!("entry {:#x}", boot.entry)
    })?;
    ensure(boot.kernel.start == 0x10_0000, || {
        format!("{:x?}", boot.kernel)
    })?;
    ensure(
        boot.kernel.len >= init_size && boot.kernel.len >= (image.len() - setup_len) as u64,
        || format!("kernel footprint {:x?} smaller than init_size", boot.kernel),
    )?;
    let r = boot.initrd.ok_or("no initrd range")?;
    ensure(r.len == initrd.len() as u64 && r.start % 4096 == 0, || {
        format!("{r:x?}")
    })?;
    ensure(r.start >= boot.kernel.end() && r.end() <= 512 << 20, || {
        format!(
            "initrd {r:x?} overlaps the kernel {:x?} or leaves RAM",
            boot.kernel
        )
    })?;
    ensure((512 << 20) - r.end() < 4096, || {
        format!("initrd {r:x?} is not at the top of RAM")
    })?;
    let rd = |gpa: u64| mem.read_u64(gpa).map_err(|e| e.to_string());
    // The protected-mode kernel at 1 MiB, byte for byte (first and last words).
    let word = |o: usize| le(o, 8);
    ensure(rd(0x10_0000)? == word(setup_len), || {
        "kernel start differs".into()
    })?;
    let last = image.len() - 8;
    ensure(
        rd(0x10_0000 + (last - setup_len) as u64)? == word(last),
        || "kernel end differs".into(),
    )?;
    let w = |o: usize| u64::from_le_bytes(initrd[o..o + 8].try_into().unwrap());
    ensure(
        rd(r.start)? == w(0) && rd(r.end() - 8)? == w(initrd.len() - 8),
        || "initrd bytes differ".into(),
    )?;
    // boot_params: the image's setup header, then what the loader filled in.
    let bp = boot.boot_info;
    let field = |off: u64, n: u32| -> Result<u64, String> {
        let v = rd(bp + off)?;
        Ok(if n == 8 {
            v
        } else {
            v & ((1u64 << (8 * n)) - 1)
        })
    };
    ensure(field(0x202, 4)? == 0x5372_6448, || {
        "no HdrS in boot_params".into()
    })?;
    ensure(field(0x206, 2)? == version, || {
        "protocol version not copied".into()
    })?;
    ensure(field(0x260, 4)? == init_size, || {
        "init_size not copied".into()
    })?;
    ensure(field(0x210, 1)? == 0xff, || "type_of_loader".into())?;
    ensure(field(0x228, 4)? == 0x2_0000, || "cmd_line_ptr".into())?;
    ensure(
        field(0x218, 4)? == r.start && field(0x21c, 4)? == r.len,
        || "ramdisk_image/size".into(),
    )?;
    ensure(field(0x1e8, 1)? == 3, || "e820_entries".into())?;
    // The last e820 entry: RAM from 1 MiB to the end.
    let e = bp + 0x2d0 + 2 * 20;
    ensure(
        rd(e)? == 0x10_0000 && rd(e + 8)? == (512 << 20) - 0x10_0000,
        || "e820 high RAM entry".into(),
    )?;
    let mut cl = vec![0u8; cmdline.len()];
    for (i, b) in cl.iter_mut().enumerate() {
        *b = (rd(0x2_0000 + i as u64)? & 0xff) as u8;
    }
    ensure(cl == cmdline.as_bytes(), || "command line differs".into())?;
    let _: GpaRange = boot.kernel;
    Ok(())
}

fn main() {
    let mut args = Arguments::from_args();
    // One QEMU at a time: the host's CPUs are shared.
    args.test_threads = Some(1);
    let mut trials = vec![];
    #[cfg(target_arch = "x86_64")]
    trials.push(needs(
        "linux_guest::x86_debian_bzimage_loads",
        || kernel("amd64", false),
        debian_bzimage_loads,
    ));
    for arch in ["arm64", "amd64"] {
        trials.push(needs(
            &format!("linux_guest::initramfs_under_qemu_{arch}"),
            qemu_ready(arch),
            move |()| boot_under_qemu(arch),
        ));
    }
    libtest_mimic::run(&args, trials).exit();
}
