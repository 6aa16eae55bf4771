# Sends the marker (argv[2]) 20 times to [argv[1]]:7777 and expects it echoed back.
import socket, sys, time
ip, marker = sys.argv[1], sys.argv[2].encode()
deadline = time.monotonic() + 10
while True:
    try:
        c = socket.create_connection((ip, 7777), timeout=2); break
    except OSError:
        if time.monotonic() > deadline: raise
        time.sleep(0.1)
c.sendall(marker * 20)
got = b""
while len(got) < len(marker) * 20:
    b = c.recv(4096)
    if not b: break
    got += b
assert got == marker * 20, got
