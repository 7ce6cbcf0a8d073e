//! Per-vCPU CPUID: KVM's supported set, made coherent and given a topology.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_STRUCTURED: u32 = 0x7;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_XSAVE: u32 = 0xd;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE: u32 = 0x8000_001d;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const ECX_XSAVE: u32 = 1 << 26;
const ECX_OSXSAVE: u32 = 1 << 27;
const ECX_AVX: u32 = 1 << 28;
const EBX_AVX2: u32 = 1 << 5;
/// Leaf 7 EBX bits of the AVX-512 family (F, DQ, IFMA, PF, ER, CD, BW, VL).
const EBX_AVX512: u32 =
    (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);

/// XSAVE components: AVX (YMM upper halves), AVX-512 opmask/ZMM state.
const XFEATURE_AVX: u32 = 2;
const XFEATURES_AVX512: [u32; 3] = [5, 6, 7];

/// Where the host's CPUID answers come from (a trait so tests can script it).
pub trait HostCpuid {
    /// (eax, ebx, ecx, edx) of leaf/subleaf on the host.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];
}

pub struct NativeCpuid;

impl HostCpuid for NativeCpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = std::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }
}

/// Bits needed to number `n` things (ceil(log2 n)).
fn id_bits(n: u32) -> u32 {
    n.next_power_of_two().trailing_zeros()
}

fn entries_mut(cpuid: &mut CpuId, leaf: u32) -> impl Iterator<Item = &mut kvm_cpuid_entry2> {
    cpuid
        .as_mut_slice()
        .iter_mut()
        .filter(move |e| e.function == leaf)
}

/// The signature QEMU's software CPU (TCG) gives in leaf 0x40000000.
const TCG_SIGNATURE: &[u8; 12] = b"TCGTCGTCGTCG";

/// True when this host is itself a guest of QEMU's TCG. Its emulated SVM
/// does not intercept a nested guest's XSETBV, so KVM here never learns the
/// guest's XCR0: it keeps loading XCR0 = x87 for the guest (its SSE and AVX
/// state then go unsaved across context switches) and answers CPUID 0xD
/// with sizes that contradict what the guest enabled. XSAVE cannot work
/// there; without it the guest kernel uses FXSAVE, which needs no XCR0.
fn host_is_tcg(host: &dyn HostCpuid) -> bool {
    if host.cpuid(LEAF_FEATURES, 0)[2] & ECX_HYPERVISOR == 0 {
        return false;
    }
    let [_, b, c, d] = host.cpuid(0x4000_0000, 0);
    let mut sig = [0u8; 12];
    for (chunk, reg) in sig.chunks_mut(4).zip([b, c, d]) {
        chunk.copy_from_slice(&reg.to_le_bytes());
    }
    &sig == TCG_SIGNATURE
}

/// Removes XSAVE and everything that needs it (AVX and up, leaf 0xD).
fn hide_xsave(cpuid: &mut CpuId) {
    for e in entries_mut(cpuid, LEAF_FEATURES) {
        e.ecx &= !(ECX_XSAVE | ECX_OSXSAVE | ECX_AVX);
    }
    for e in entries_mut(cpuid, LEAF_STRUCTURED).filter(|e| e.index == 0) {
        e.ebx &= !(EBX_AVX2 | EBX_AVX512);
    }
    for e in entries_mut(cpuid, LEAF_XSAVE) {
        (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
    }
}

/// Makes the XSAVE leaf agree with what the kernel will be able to enable.
///
/// Under nested virtualisation (and on some hosts) KVM can report XSAVE
/// components whose state size the host CPU itself does not report, or whose
/// feature flags are missing; the guest kernel then enables a state size
/// that differs from CPUID's and warns "XSAVE consistency problem". A
/// component is kept only if the host reports the same size for it and its
/// feature flag is offered; the leaf's sizes are then recomputed.
fn make_xsave_coherent(cpuid: &mut CpuId, host: &dyn HostCpuid) {
    if host_is_tcg(host) {
        hide_xsave(cpuid);
        return;
    }
    let feature_ecx = entries_mut(cpuid, LEAF_FEATURES)
        .next()
        .map_or(0, |e| e.ecx);
    let structured_ebx = entries_mut(cpuid, LEAF_STRUCTURED)
        .find(|e| e.index == 0)
        .map_or(0, |e| e.ebx);
    let sizes: Vec<(u32, u32, u32)> = cpuid
        .as_slice()
        .iter()
        .filter(|e| e.function == LEAF_XSAVE && (2..32).contains(&e.index))
        .map(|e| (e.index, e.eax, e.ebx))
        .collect();
    let Some(mask) = entries_mut(cpuid, LEAF_XSAVE)
        .find(|e| e.index == 0)
        .map(|e| e.eax)
    else {
        return;
    };

    let mut keep = mask;
    for bit in 2..32 {
        if mask & (1 << bit) == 0 {
            continue;
        }
        let ours = sizes.iter().find(|(i, _, _)| *i == bit).map(|&(_, s, _)| s);
        let hosts = host.cpuid(LEAF_XSAVE, bit)[0];
        let flag_ok = match bit {
            XFEATURE_AVX => feature_ecx & ECX_AVX != 0,
            b if XFEATURES_AVX512.contains(&b) => structured_ebx & EBX_AVX512 != 0,
            _ => true,
        };
        if ours.is_none() || ours != Some(hosts) || hosts == 0 || !flag_ok {
            keep &= !(1 << bit);
        }
    }
    if keep & (1 << XFEATURE_AVX) == 0 {
        // AVX-512 state needs AVX state; AVX itself needs its state.
        keep &= !XFEATURES_AVX512.iter().fold(0, |m, b| m | (1 << b));
        for e in entries_mut(cpuid, LEAF_FEATURES) {
            e.ecx &= !ECX_AVX;
        }
        for e in entries_mut(cpuid, LEAF_STRUCTURED).filter(|e| e.index == 0) {
            e.ebx &= !(EBX_AVX2 | EBX_AVX512);
        }
    } else if XFEATURES_AVX512.iter().any(|b| keep & (1 << b) == 0) {
        keep &= !XFEATURES_AVX512.iter().fold(0, |m, b| m | (1 << b));
        for e in entries_mut(cpuid, LEAF_STRUCTURED).filter(|e| e.index == 0) {
            e.ebx &= !EBX_AVX512;
        }
    }

    // Standard-format size of everything kept: the end of the last component.
    let size = sizes
        .iter()
        .filter(|(i, _, _)| keep & (1 << i) != 0)
        .map(|&(_, len, off)| off + len)
        .fold(512 + 64, u32::max);
    for e in entries_mut(cpuid, LEAF_XSAVE) {
        match e.index {
            0 => {
                e.eax = keep;
                e.ebx = size;
                e.ecx = size;
            }
            i if (2..32).contains(&i) && keep & (1 << i) == 0 => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

/// Fills in what must differ between vCPUs and what KVM leaves to the VMM:
/// APIC ids, the package topology (`vcpus` cores, one thread each), the
/// hypervisor bit.
pub fn for_vcpu(supported: &CpuId, vcpu: u32, vcpus: u32, host: &dyn HostCpuid) -> CpuId {
    let mut cpuid = supported.clone();
    make_xsave_coherent(&mut cpuid, host);
    let core_bits = id_bits(vcpus);
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (vcpu << 24) | ((vcpus & 0xff) << 16);
                e.ecx |= ECX_HYPERVISOR;
                if vcpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                // EAX[31:26]: cores per package - 1; [25:14]: threads sharing
                // the cache - 1 (L3 is shared by the package, others per core).
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 {
                    vcpus.saturating_sub(1)
                } else {
                    0
                };
                e.eax = (e.eax & 0x3fff)
                    | ((vcpus.saturating_sub(1) & 0x3f) << 26)
                    | ((sharing & 0xfff) << 14);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                e.edx = vcpu;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = vcpus;
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            LEAF_AMD_SIZES => {
                // ECX[15:12] APIC id size, [7:0] cores - 1.
                e.ecx = (core_bits << 12) | (vcpus.saturating_sub(1) & 0xff);
            }
            LEAF_AMD_CACHE => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 {
                    vcpus.saturating_sub(1)
                } else {
                    0
                };
                e.eax = (e.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
            }
            LEAF_AMD_TOPOLOGY => {
                e.eax = vcpu;
                e.ebx = vcpu & 0xff; // core id; threads per core - 1 = 0
                e.ecx = 0; // node 0, one node per package
            }
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Host(Vec<(u32, u32, [u32; 4])>);
    impl HostCpuid for Host {
        fn cpuid(&self, leaf: u32, sub: u32) -> [u32; 4] {
            self.0
                .iter()
                .find(|(l, s, _)| *l == leaf && *s == sub)
                .map_or([0; 4], |e| e.2)
        }
    }

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn supported(avx: bool) -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0, [0xd, 0, 0, 0]),
            entry(
                1,
                0,
                [0x800f12, 0x0008_0800, if avx { ECX_AVX } else { 0 } | 1, 0],
            ),
            entry(4, 0, [0x121, 0, 0, 0]),
            entry(4, 3, [0x163, 0, 0, 0]),
            entry(7, 0, [0, EBX_AVX2, 0, 0]),
            entry(0xb, 0, [0, 0, 0, 0]),
            entry(0xb, 1, [0, 0, 0, 0]),
            entry(0xb, 2, [0, 0, 0, 0]),
            entry(0xd, 0, [0x7, 832, 832, 0]),
            entry(0xd, 1, [0x1, 0, 0, 0]),
            entry(0xd, 2, [256, 576, 0, 0]),
            entry(0x8000_0008, 0, [0x3030, 0, 0, 0]),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn apic_ids_topology_and_hypervisor_bit() {
        let host = Host(vec![(0xd, 2, [256, 576, 0, 0])]);
        for (vcpu, vcpus) in [(0, 1), (1, 2), (3, 4), (2, 3)] {
            let c = for_vcpu(&supported(true), vcpu, vcpus, &host);
            let l1 = find(&c, 1, 0);
            assert_eq!(l1.ebx >> 24, vcpu, "initial APIC id");
            assert_eq!((l1.ebx >> 16) & 0xff, vcpus);
            assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_eq!(l1.edx & EDX_HTT != 0, vcpus > 1);
            assert_eq!(find(&c, 0xb, 0).edx, vcpu);
            assert_eq!(find(&c, 0xb, 1).ebx, vcpus);
            assert_eq!(find(&c, 0xb, 1).eax, id_bits(vcpus));
            assert_eq!(find(&c, 0xb, 2).ecx, 2, "invalid level terminates");
            assert_eq!(find(&c, 4, 0).eax >> 26, vcpus - 1);
            assert_eq!((find(&c, 4, 3).eax >> 14) & 0xfff, vcpus - 1, "L3 shared");
            assert_eq!(find(&c, 0x8000_0008, 0).ecx & 0xff, vcpus - 1);
        }
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
    }

    #[test]
    fn xsave_hidden_under_tcg() {
        let sig = |s: &[u8; 12]| {
            let w = |i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap());
            [0x4000_0001, w(0), w(4), w(8)]
        };
        let tcg = Host(vec![
            (0xd, 2, [256, 576, 0, 0]),
            (1, 0, [0, 0, ECX_HYPERVISOR, 0]),
            (0x4000_0000, 0, sig(b"TCGTCGTCGTCG")),
        ]);
        let c = for_vcpu(&supported(true), 0, 1, &tcg);
        assert_eq!(find(&c, 0xd, 0).eax, 0, "no XSAVE state at all");
        assert_eq!(find(&c, 1, 0).ecx & (ECX_AVX | ECX_XSAVE | ECX_OSXSAVE), 0);
        assert_eq!(find(&c, 7, 0).ebx & EBX_AVX2, 0);
        // Under KVM (or on bare metal) the state stays.
        let kvm = Host(vec![
            (0xd, 2, [256, 576, 0, 0]),
            (1, 0, [0, 0, ECX_HYPERVISOR, 0]),
            (0x4000_0000, 0, sig(b"KVMKVMKVM\0\0\0")),
        ]);
        assert_eq!(
            find(&for_vcpu(&supported(true), 0, 1, &kvm), 0xd, 0).eax,
            0x7
        );
    }

    #[test]
    fn xsave_kept_when_host_agrees() {
        let host = Host(vec![(0xd, 2, [256, 576, 0, 0])]);
        let c = for_vcpu(&supported(true), 0, 1, &host);
        let d0 = find(&c, 0xd, 0);
        assert_eq!(d0.eax, 0x7);
        assert_eq!(d0.ebx, 832);
        assert_ne!(find(&c, 1, 0).ecx & ECX_AVX, 0);
    }

    #[test]
    fn xsave_component_the_host_does_not_size_is_dropped() {
        // The nested case: KVM offers AVX state, the host CPU reports none.
        let c = for_vcpu(&supported(true), 0, 2, &Host(vec![]));
        let d0 = find(&c, 0xd, 0);
        assert_eq!(d0.eax, 0x3, "only x87 and SSE remain");
        assert_eq!((d0.ebx, d0.ecx), (576, 576));
        assert_eq!(find(&c, 0xd, 2).eax, 0);
        assert_eq!(
            find(&c, 1, 0).ecx & ECX_AVX,
            0,
            "AVX flag hidden with its state"
        );
        assert_eq!(find(&c, 7, 0).ebx & EBX_AVX2, 0);
    }

    #[test]
    fn xsave_component_without_its_feature_flag_is_dropped() {
        let host = Host(vec![(0xd, 2, [256, 576, 0, 0])]);
        let c = for_vcpu(&supported(false), 0, 1, &host);
        assert_eq!(find(&c, 0xd, 0).eax, 0x3);
        assert_eq!(find(&c, 0xd, 0).ebx, 576);
    }
}
