//! Buffers that the threads of one parallel run write at disjoint places, with barriers in
//! between: the only shared mutable state of the CPU backend.

use std::cell::UnsafeCell;

/// A fixed-size buffer shared by the pool's threads. Every access is `unsafe`: the caller
/// promises that no other thread writes the same elements between two barriers.
pub struct Shared<T> {
    cell: UnsafeCell<Box<[T]>>,
    len: usize,
}

// SAFETY: access is coordinated by the pool's barriers; each method's contract says that
// concurrent accesses never touch the same element unless all of them are reads.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T: Copy + Default> Shared<T> {
    /// `len` default values.
    pub fn new(len: usize) -> Shared<T> {
        Shared {
            cell: UnsafeCell::new(vec![T::default(); len].into_boxed_slice()),
            len,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn ptr(&self) -> *mut T {
        // SAFETY: taking the raw pointer creates no reference to the contents.
        unsafe { (*self.cell.get()).as_mut_ptr() }
    }

    /// Elements `start..start + n` for reading.
    ///
    /// # Safety
    /// No thread may write any of these elements until the next barrier.
    pub unsafe fn get(&self, start: usize, n: usize) -> &[T] {
        assert!(start + n <= self.len, "shared buffer read out of range");
        // SAFETY: in bounds (checked above); no concurrent writer (caller's contract).
        unsafe { std::slice::from_raw_parts(self.ptr().add(start), n) }
    }

    /// Elements `start..start + n` for writing.
    ///
    /// # Safety
    /// No other thread may read or write any of these elements until the next barrier.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_mut(&self, start: usize, n: usize) -> &mut [T] {
        assert!(start + n <= self.len, "shared buffer write out of range");
        // SAFETY: in bounds (checked above); exclusive access (caller's contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr().add(start), n) }
    }

    /// The base pointer, for kernels that take raw strided pointers.
    ///
    /// # Safety
    /// Writes through it follow the same rule as [`Shared::get_mut`].
    pub unsafe fn as_mut_ptr(&self) -> *mut T {
        self.ptr()
    }

    /// Writes one element.
    ///
    /// # Safety
    /// No other thread may read or write element `i` until the next barrier.
    pub unsafe fn set(&self, i: usize, v: T) {
        assert!(i < self.len, "shared buffer write out of range");
        // SAFETY: in bounds (checked above); exclusive access (caller's contract).
        unsafe { self.ptr().add(i).write(v) }
    }

    /// The whole buffer, for the single thread that owns it outside parallel runs.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        self.cell.get_mut()
    }

    /// The whole buffer, read outside parallel runs.
    pub fn as_slice(&mut self) -> &[T] {
        self.cell.get_mut()
    }
}
