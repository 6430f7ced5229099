//! The Linux guest: Debian's arm64 kernel and busybox-static, fetched from Debian's
//! package archive without touching this machine's dpkg or apt configuration, and an
//! initramfs built here (no `cpio` program needed).
//!
//! `cargo xtask linux-guest` fetches and builds; `cargo xtask qemu --guest linux` boots
//! the result. Everything lives under `target/linux-guest/` and is reused while present:
//!
//! | file | what |
//! | --- | --- |
//! | `apt/` | apt-get's own state, cache, lists and an empty dpkg status (`-o APT::Architecture=arm64`) |
//! | `debs/` | the two downloaded packages |
//! | `Image` | the kernel (Debian ships the uncompressed arm64 Image as `vmlinuz`) |
//! | `initramfs.cpio` | busybox at `/bin/busybox` and the [`INIT`] script as `/init` |
//!
//! The guest's `/init` looks at its command line: with [`CI_WORD`] it checks that every
//! CPU came online and that the architected timer's interrupt count grows on each CPU,
//! prints [`MARKER`] and a verdict, and powers off; otherwise it starts a busybox shell
//! on the console.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel package's meta package (depends on the current versioned one).
pub const KERNEL_META: &str = "linux-image-arm64";
/// The busybox package.
pub const BUSYBOX: &str = "busybox-static";
/// The command-line word that makes `/init` run its checks and power off.
pub const CI_WORD: &str = "linux-guest.ci";
/// What `/init` prints when it runs (followed by its checks' verdict).
pub const MARKER: &str = "linux-guest: init running";
/// The verdict `/init` prints when every check passed.
pub const PASSED: &str = "linux-guest: checks passed";
/// The command line `--guest linux` uses unless `--guest-append` says otherwise.
pub const DEFAULT_APPEND: &str = "console=ttyAMA0 earlycon";
/// Guest RAM `--guest linux` uses unless `--guest-mem` says otherwise.
pub const DEFAULT_MEM: u64 = 256 << 20;

/// The guest's `/init` (busybox sh).
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
want=$(grep -c ^processor /proc/cpuinfo)
online=$(cat /sys/devices/system/cpu/online)
echo "linux-guest: init running: cpus=$want online=$online kernel=$(uname -r)"
if grep -qw linux-guest.ci /proc/cmdline; then
    ok=1
    present=$(cat /sys/devices/system/cpu/present)
    [ "$online" = "$present" ] || { echo "linux-guest: FAILED: online $online present $present"; ok=0; }
    t1=$(grep arch_timer /proc/interrupts)
    sleep 1
    t2=$(grep arch_timer /proc/interrupts)
    echo "linux-guest: timer before: $t1"
    echo "linux-guest: timer after:  $t2"
    i=2
    while [ $i -le $((want + 1)) ]; do
        a=$(echo $t1 | cut -d' ' -f$i)
        b=$(echo $t2 | cut -d' ' -f$i)
        if [ -z "$a" ] || [ -z "$b" ] || [ "$b" -le "$a" ]; then
            echo "linux-guest: FAILED: timer interrupts on cpu$((i - 2)): $a -> $b"
            ok=0
        fi
        i=$((i + 1))
    done
    [ $ok = 1 ] && echo "linux-guest: checks passed"
    poweroff -f
fi
echo "linux-guest: busybox shell (poweroff -f to end)"
exec setsid cttyhack sh
"#;

/// The fetched kernel and the built initramfs.
#[derive(Clone, Debug)]
pub struct LinuxGuest {
    /// The arm64 Image.
    pub kernel: PathBuf,
    /// The initramfs (uncompressed newc cpio).
    pub initramfs: PathBuf,
}

/// `target/linux-guest` of the workspace at `root`.
pub fn dir(root: &Path) -> PathBuf {
    root.join("target/linux-guest")
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// apt-get/apt-cache with their own state under `apt`, the machine's package sources,
/// and arm64 as the only architecture; dpkg's own database is never read or written.
fn apt(tool: &str, apt_dir: &Path) -> Command {
    let mut c = Command::new(tool);
    let d = apt_dir.display();
    for o in [
        format!("Dir::State={d}/state"),
        format!("Dir::Cache={d}/cache"),
        format!("Dir::State::status={d}/status"),
        "APT::Architecture=arm64".to_string(),
        "APT::Architectures=arm64".to_string(),
        // Downloads land in a directory of ours, which the sandbox user cannot enter.
        "APT::Sandbox::User=root".to_string(),
    ] {
        c.arg("-o").arg(o);
    }
    c
}

/// The versioned kernel package `linux-image-arm64` depends on.
fn kernel_package(apt_dir: &Path) -> Result<String, String> {
    let deps = run(apt("apt-cache", apt_dir).args(["depends", KERNEL_META]))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-arm64"))
        .map(str::to_string)
        .ok_or_else(|| format!("{KERNEL_META} names no arm64 kernel package:\n{deps}"))
}

/// Fetches (once) and returns the Linux guest's files.
pub fn fetch(root: &Path) -> Result<LinuxGuest, String> {
    let d = dir(root);
    let guest = LinuxGuest {
        kernel: d.join("Image"),
        initramfs: d.join("initramfs.cpio"),
    };
    let busybox = d.join("busybox");
    if !guest.kernel.is_file() || !busybox.is_file() {
        download(&d, &guest.kernel, &busybox)?;
    }
    let bb = std::fs::read(&busybox).map_err(|e| format!("{}: {e}", busybox.display()))?;
    let cpio = initramfs(&bb);
    // Unchanged bytes are not rewritten, so nothing downstream sees a new file.
    if std::fs::read(&guest.initramfs).ok().as_deref() != Some(&cpio[..]) {
        std::fs::write(&guest.initramfs, &cpio)
            .map_err(|e| format!("{}: {e}", guest.initramfs.display()))?;
    }
    Ok(guest)
}

fn download(d: &Path, kernel: &Path, busybox: &Path) -> Result<(), String> {
    let apt_dir = d.join("apt");
    for sub in ["state/lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt_dir.join(sub)).map_err(|e| format!("{e}"))?;
    }
    std::fs::write(apt_dir.join("status"), b"").map_err(|e| format!("{e}"))?;
    eprintln!(
        "xtask: linux-guest: apt-get update (arm64, own state in {})",
        apt_dir.display()
    );
    run(apt("apt-get", &apt_dir).args(["-q", "update"]))?;
    let pkg = kernel_package(&apt_dir)?;
    let debs = d.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| format!("{e}"))?;
    eprintln!("xtask: linux-guest: downloading {pkg} and {BUSYBOX}");
    run(apt("apt-get", &apt_dir)
        .current_dir(&debs)
        .args(["-q", "download", &pkg, BUSYBOX]))?;
    let extract = d.join("extract");
    let _ = std::fs::remove_dir_all(&extract);
    for entry in std::fs::read_dir(&debs).map_err(|e| format!("{e}"))? {
        let p = entry.map_err(|e| format!("{e}"))?.path();
        if p.extension().is_some_and(|e| e == "deb") {
            run(Command::new("dpkg-deb").arg("-x").arg(&p).arg(&extract))?;
        }
    }
    let vmlinuz = std::fs::read_dir(extract.join("boot"))
        .map_err(|e| format!("no /boot in {pkg}: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| format!("no vmlinuz in {pkg}"))?;
    std::fs::copy(&vmlinuz, kernel).map_err(|e| format!("{e}"))?;
    std::fs::copy(extract.join("bin/busybox"), busybox)
        .map_err(|e| format!("no bin/busybox in {BUSYBOX}: {e}"))?;
    eprintln!("xtask: linux-guest: kernel {} ({pkg})", kernel.display());
    Ok(())
}

/// The initramfs: `/bin`, `/bin/busybox`, `/init`.
pub fn initramfs(busybox: &[u8]) -> Vec<u8> {
    let mut w = CpioWriter::default();
    w.dir("bin");
    w.file("bin/busybox", 0o755, busybox);
    w.file("init", 0o755, INIT.as_bytes());
    w.finish()
}

/// A writer of the "newc" cpio format the kernel unpacks as an initramfs: per entry a
/// 110-byte ASCII header (magic `070701`, thirteen 8-digit hex fields), the NUL-ended
/// name, padding to 4 bytes, the data, padding to 4 bytes; a `TRAILER!!!` entry ends it.
#[derive(Default)]
pub struct CpioWriter {
    out: Vec<u8>,
    ino: u32,
}

impl CpioWriter {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            namesize as u32,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[]);
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, data);
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a newc archive back: (name, mode, data) per entry.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut v = Vec::new();
        let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).unwrap(), 16).unwrap();
        let mut off = 0;
        loop {
            assert_eq!(&b[..6], b"070701", "magic at {off}");
            let mode = hex(&b[14..22]);
            let size = hex(&b[54..62]) as usize;
            let namesize = hex(&b[94..102]) as usize;
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(b[110 + namesize - 1], 0);
            let data_at = (110 + namesize).next_multiple_of(4);
            let data = b[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            off += next;
            b = &b[next..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return v;
            }
            v.push((name, mode, data));
        }
    }

    #[test]
    fn the_initramfs_holds_busybox_and_init_in_newc_format() {
        let cpio = initramfs(b"\x7fELF-busybox");
        assert_eq!(cpio.len() % 4, 0);
        let e = parse(&cpio);
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].0.as_str(), e[0].1), ("bin", 0o040755));
        assert_eq!((e[1].0.as_str(), e[1].1), ("bin/busybox", 0o100755));
        assert_eq!(e[1].2, b"\x7fELF-busybox");
        assert_eq!((e[2].0.as_str(), e[2].1), ("init", 0o100755));
        assert!(e[2].2.starts_with(b"#!/bin/busybox sh\n"));
    }

    #[test]
    fn init_prints_the_marker_and_the_verdict_tests_look_for() {
        assert!(INIT.contains(&MARKER.replace("init running", "init running:")));
        assert!(INIT.contains(PASSED));
        assert!(INIT.contains(CI_WORD));
        assert!(INIT.contains("poweroff -f"));
    }
}
