//go:build !amd64

package main

const supported = false

func compatGetpid() int32 { panic("unsupported") }
