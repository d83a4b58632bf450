//! The scaffolding every header view shares, written once.
//!
//! [`header_view!`] declares a view type (`Packet<T>` or `Frame<T>` over any
//! `T: AsRef<[u8]>`) with its `new_unchecked`, its `new_checked` (which runs
//! the view's own length/version checks, in order) and `into_inner`.
//! [`header_fields!`] declares fixed-offset field getters (on `AsRef`) and
//! setters (on `AsMut`) through [`FieldValue`], which reads and writes one
//! value big-endian (network order) at a byte offset. Every generated
//! accessor is `#[inline(always)]`, like the hand-written ones it replaced,
//! and compiles to the same loads and stores. Accessors that pack several
//! values into one field (flags, lengths in words, bit fields) stay
//! hand-written in their protocol's file.
//!
//! Protocol files implement [`FieldValue`] for their own types (with
//! [`field_value_as!`] or [`field_value_bytes!`]), so this module depends
//! on none of them.
//!
//! Invariants: getters and setters index the buffer at constant offsets and
//! panic only on a buffer shorter than the field, which `new_checked`
//! rules out. Thread-safety: no state; plain functions and macros.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A value stored at a fixed byte offset of a header, in network order.
pub(crate) trait FieldValue: Sized {
    /// Reads the value at `at`. The caller guarantees the bounds.
    fn read(buf: &[u8], at: usize) -> Self;
    /// Writes the value at `at`. The caller guarantees the bounds.
    fn write(self, buf: &mut [u8], at: usize);
}

/// The `N` bytes at `at`. The caller guarantees the bounds.
#[inline(always)]
pub(crate) fn bytes_at<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&buf[at..at + N]);
    a
}

/// Implements [`FieldValue`] for a type stored as `N` bytes, from and to
/// its network-order byte array.
macro_rules! field_value_bytes {
    ($($ty:ty: $n:literal, |$b:ident| $from:expr, |$v:ident| $to:expr;)+) => {$(
        impl $crate::wire::view::FieldValue for $ty {
            #[inline(always)]
            fn read(buf: &[u8], at: usize) -> $ty {
                let $b = $crate::wire::view::bytes_at::<$n>(buf, at);
                $from
            }
            #[inline(always)]
            fn write(self, buf: &mut [u8], at: usize) {
                let $v = self;
                buf[at..at + $n].copy_from_slice(&$to);
            }
        }
    )+};
}

field_value_bytes! {
    u8: 1, |b| b[0], |v| [v];
    u16: 2, |b| u16::from_be_bytes(b), |v| v.to_be_bytes();
    u32: 4, |b| u32::from_be_bytes(b), |v| v.to_be_bytes();
    Ipv4Addr: 4, |b| Ipv4Addr::from(b), |v| v.octets();
    Ipv6Addr: 16, |b| Ipv6Addr::from(b), |v| v.octets();
}

/// Implements [`FieldValue`] for protocol-number enums stored as a plain
/// integer (`From` both ways, every value representable).
macro_rules! field_value_as {
    ($($ty:ty => $raw:ty),+ $(,)?) => {$(
        impl $crate::wire::view::FieldValue for $ty {
            #[inline(always)]
            fn read(buf: &[u8], at: usize) -> $ty {
                <$ty>::from(<$raw as $crate::wire::view::FieldValue>::read(buf, at))
            }
            #[inline(always)]
            fn write(self, buf: &mut [u8], at: usize) {
                <$raw as $crate::wire::view::FieldValue>::write(self.into(), buf, at)
            }
        }
    )+};
}

/// Declares a view struct over `T: AsRef<[u8]>` with `new_unchecked`,
/// `new_checked` (running the listed check methods in order),
/// `into_inner`, and its fixed-offset fields.
///
/// ```text
/// header_view! {
///     /// The view's documentation (what the checks guarantee).
///     pub struct Packet: check_len;
///     @transport_ports;                        // optional: L4 ports at 0 and 2
///     /// The getter's documentation.
///     checksum, set_checksum: u16 @ field::CHECKSUM;
///     next_hop_mtu: u16 @ field::MTU;          // getter only
/// }
/// ```
///
/// Every field getter needs `AsRef<[u8]>`, every setter `AsMut<[u8]>`;
/// both are `#[inline(always)]`. A setter writes its field and nothing
/// else: checksums covering it are left for the caller to patch.
macro_rules! header_view {
    (
        $(#[$meta:meta])*
        pub struct $view:ident: $($check:ident),+;
        $(@$extra:ident;)?
        $(
            $(#[$get_doc:meta])*
            $get:ident $(, $set:ident)?: $ty:ident @ $at:expr;
        )*
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $view<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $view<T> {
            /// Wraps `buffer` without checking it (see the type's
            /// documentation for what then panics).
            pub const fn new_unchecked(buffer: T) -> $view<T> {
                $view { buffer }
            }

            /// Wraps untrusted bytes, checking every length and version the
            /// getters rely on (see the type's documentation).
            pub fn new_checked(buffer: T) -> $crate::wire::Result<$view<T>> {
                let view = Self::new_unchecked(buffer);
                $(view.$check()?;)+
                Ok(view)
            }

            /// Returns the underlying buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            $(
                $(#[$get_doc])*
                #[inline(always)]
                pub fn $get(&self) -> $ty {
                    <$ty as $crate::wire::view::FieldValue>::read(self.buffer.as_ref(), $at)
                }
            )*
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $view<T> {
            $($(
                #[doc = concat!("Sets the field [`", stringify!($view), "::", stringify!($get),
                                "`] reads (checksums are not updated).")]
                #[inline(always)]
                pub fn $set(&mut self, value: $ty) {
                    $crate::wire::view::FieldValue::write(value, self.buffer.as_mut(), $at)
                }
            )?)*
        }

        $($crate::wire::view::$extra!($view);)?
    };
}

/// The source and destination ports at bytes 0 and 2, where TCP, UDP and
/// SCTP all put them.
macro_rules! transport_ports {
    ($view:ident) => {
        impl<T: AsRef<[u8]>> $view<T> {
            /// Source port.
            #[inline(always)]
            pub fn src_port(&self) -> u16 {
                $crate::wire::read_u16(self.buffer.as_ref(), 0)
            }

            /// Destination port.
            #[inline(always)]
            pub fn dst_port(&self) -> u16 {
                $crate::wire::read_u16(self.buffer.as_ref(), 2)
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $view<T> {
            /// Sets the source port (checksums are not updated).
            #[inline(always)]
            pub fn set_src_port(&mut self, value: u16) {
                $crate::wire::write_u16(self.buffer.as_mut(), 0, value)
            }

            /// Sets the destination port (checksums are not updated).
            #[inline(always)]
            pub fn set_dst_port(&mut self, value: u16) {
                $crate::wire::write_u16(self.buffer.as_mut(), 2, value)
            }
        }
    };
}

pub(crate) use {field_value_as, field_value_bytes, header_view, transport_ports};
