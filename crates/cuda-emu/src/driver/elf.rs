//! ELF section reading for CUBIN images, and [`ptx_from_cubin`]: the PTX text a CUBIN carries
//! in its `.nv_debug_ptx_txt` section.

fn rd_u16(b: &[u8], o: usize) -> Option<u64> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?) as u64)
}
fn rd_u32(b: &[u8], o: usize) -> Option<u64> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?) as u64)
}
fn rd_u64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// (name offset, type, file offset, size) of one ELF section.
type SectionHeader = (u64, u64, u64, u64);

/// Section headers of an ELF64 little-endian image: (name offset, type, offset, size), and
/// the index of the section-name table. `image` needs only hold the parts read.
fn elf_sections(image: &[u8]) -> Result<(Vec<SectionHeader>, usize), String> {
    if image.len() < 64 || &image[..4] != b"\x7fELF" {
        return Err("not an ELF image".into());
    }
    if image[4] != 2 || image[5] != 1 {
        return Err("not a 64-bit little-endian ELF image".into());
    }
    let bad = || "truncated ELF header".to_string();
    let shoff = rd_u64(image, 0x28).ok_or_else(bad)? as usize;
    let shentsize = rd_u16(image, 0x3a).ok_or_else(bad)? as usize;
    let shnum = rd_u16(image, 0x3c).ok_or_else(bad)? as usize;
    let shstrndx = rd_u16(image, 0x3e).ok_or_else(bad)? as usize;
    if shentsize < 64 {
        return Err(format!("ELF section header size {shentsize} < 64"));
    }
    let mut out = Vec::with_capacity(shnum);
    for i in 0..shnum {
        let o = shoff + i * shentsize;
        let sec = || format!("ELF section header {i} lies outside the image");
        out.push((
            rd_u32(image, o).ok_or_else(sec)?,
            rd_u32(image, o + 4).ok_or_else(sec)?,
            rd_u64(image, o + 24).ok_or_else(sec)?,
            rd_u64(image, o + 32).ok_or_else(sec)?,
        ));
    }
    Ok((out, shstrndx))
}

/// The bytes an ELF image spans (its header, section headers and sections).
///
/// # Safety
/// `p` points to an ELF image (at least its 64-byte header, then as much as it declares).
pub(super) unsafe fn elf_len(p: *const u8) -> Result<usize, String> {
    // SAFETY: an ELF header is 64 bytes.
    let head = unsafe { std::slice::from_raw_parts(p, 64) };
    let shoff = rd_u64(head, 0x28).unwrap_or(0) as usize;
    let shentsize = rd_u16(head, 0x3a).unwrap_or(0) as usize;
    let shnum = rd_u16(head, 0x3c).unwrap_or(0) as usize;
    if shentsize < 64 || shnum == 0 || shoff > (1 << 32) {
        return Err("the ELF image has no section headers".into());
    }
    let table_end = shoff + shentsize * shnum;
    // SAFETY: the image declares its section header table up to `table_end`.
    let img = unsafe { std::slice::from_raw_parts(p, table_end) };
    let (secs, _) = elf_sections(img)?;
    let mut end = table_end;
    for &(_, ty, off, size) in &secs {
        if ty != 8 {
            // not SHT_NOBITS
            end = end.max((off + size) as usize);
        }
    }
    Ok(end)
}

/// The PTX a CUBIN carries in section `.nv_debug_ptx_txt` (present when compiled with
/// `--generate-line-info`), its NUL line separators turned into newlines.
pub fn ptx_from_cubin(image: &[u8]) -> Result<String, String> {
    let (secs, strndx) = elf_sections(image)?;
    let &(_, _, stroff, strsize) = secs
        .get(strndx)
        .ok_or("the ELF section-name table index is out of range")?;
    let strtab = image
        .get(stroff as usize..(stroff + strsize) as usize)
        .ok_or("the ELF section-name table lies outside the image")?;
    for &(name, _, off, size) in &secs {
        let n = strtab.get(name as usize..).unwrap_or(&[]);
        let n = &n[..n.iter().position(|&b| b == 0).unwrap_or(n.len())];
        if n == b".nv_debug_ptx_txt" {
            let data = image
                .get(off as usize..(off + size) as usize)
                .ok_or("section .nv_debug_ptx_txt lies outside the image")?;
            let text: String = String::from_utf8_lossy(data)
                .trim_end_matches('\0')
                .replace('\0', "\n");
            return Ok(text);
        }
    }
    Err(
        "the CUBIN has no .nv_debug_ptx_txt section: the emulator needs the PTX, so compile \
         with --generate-line-info (or load PTX text)"
            .into(),
    )
}
