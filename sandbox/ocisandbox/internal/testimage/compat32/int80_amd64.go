package main

const supported = true

// compatGetpid makes the i386 getpid system call through int 0x80.
func compatGetpid() int32
