# Helpers the benchmark scripts share (sourced by tools/bench-ab,
# tools/bench-cpu and tools/bench-send; not run on its own).

# The median of the numbers on standard input, one per line.
median() { sort -n | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

# A free TCP port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# fio_cpu PID URI [FIO OPTIONS...]: one 5 s fio run (nbd engine, iodepth
# ${QD:-32}, over 512 MiB) against the NBD server PID at URI. Prints
# "IOPS server-CPUs server-CPU-us-per-request fio-CPU-%": the server's CPU
# time (utime + stime in /proc/PID/stat) over the run, and per request.
fio_cpu() {
    local pid=$1 uri=$2 t0 t1 out
    shift 2
    t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    out=$(fio --name=b --ioengine=nbd --uri="$uri" --iodepth="${QD:-32}" --size=512M --runtime=5 \
        --time_based "$@" --output-format=json 2>/dev/null)
    t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    echo "$out" | python3 -c 'import json,sys,os
t=sys.stdin.read(); j=json.loads(t[t.find("{"):])["jobs"][0]
iops=j["write"]["iops"] or j["read"]["iops"]
cpu=(int(sys.argv[2]) - int(sys.argv[1])) / os.sysconf("SC_CLK_TCK")
print(int(iops), round(cpu / 5, 2), round(cpu * 1e6 / max(1, iops * 5), 2), round(j["usr_cpu"] + j["sys_cpu"]))' "$t0" "$t1"
}
