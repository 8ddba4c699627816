//! Reading an initrd back as its segments: the zstd frames it is the concatenation of.
//!
//! `zstd -dc` decodes every frame of a file in turn, but GNU cpio stops reading at the first
//! `TRAILER!!!`, so `zstd -dc initrd | cpio -t` lists the first segment only; the kernel goes on
//! with the next archive. To list or unpack every segment, split the initrd here and give each
//! frame to the tools on its own.

use super::error::InitrdError;

/// The zstd frames of `initrd`, in order; fails on anything that is not a whole frame.
pub fn split_frames(initrd: &[u8]) -> Result<Vec<&[u8]>, InitrdError> {
    let mut frames = Vec::new();
    let mut rest = initrd;
    while !rest.is_empty() {
        let offset = initrd.len() - rest.len();
        let len = zstd::zstd_safe::find_frame_compressed_size(rest).map_err(|code| {
            InitrdError::Frames {
                offset,
                reason: zstd::zstd_safe::get_error_name(code).to_owned(),
            }
        })?;
        if len == 0 || len > rest.len() {
            return Err(InitrdError::Frames {
                offset,
                reason: "a frame runs past the end".to_owned(),
            });
        }
        let (frame, tail) = rest.split_at(len);
        frames.push(frame);
        rest = tail;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_frames_split_back() {
        let mut joined = zstd::bulk::compress(b"first", 3).unwrap();
        let first = joined.len();
        joined.extend(zstd::bulk::compress(b"second", 3).unwrap());
        let frames = split_frames(&joined).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].len(), first);
        assert_eq!(zstd::decode_all(frames[1]).unwrap(), b"second");
    }

    #[test]
    fn truncated_or_foreign_input_is_an_error() {
        let frame = zstd::bulk::compress(b"first", 3).unwrap();
        assert!(split_frames(&frame[..frame.len() - 1]).is_err());
        assert!(split_frames(b"070701").is_err());
        assert!(split_frames(b"").unwrap().is_empty());
    }
}
