"""Indonesian text of the "what to check" lists (gateway.health.alerts.CHECKS, gateway.health.gateway.GATEWAY_CHECKS).

    gateway.web.status (status page) --problem name--> CHECKS_ID[name][i] beside the English CHECKS[name][i]

The office technicians read Indonesian first; the English stays beside it for vendors and the regency's IT.
Item i here translates item i of the English list (tests/web check that every problem has one per line).
A problem without a translation yet shows the English alone.
"""

from __future__ import annotations

CHECKS_ID: dict[str, tuple[str, ...]] = {
    "offline": (
        "Apakah mesin menyala (layar hidup)? Periksa adaptor dan stop kontak.",
        "Kabel jaringan terpasang di kedua ujung, lampu link di port switch menyala?",
        "Apakah alamat IP berubah (DHCP)? Bandingkan menu mesin COMM > Ethernet dengan konfigurasi gateway.",
        "Dari server gateway: ping mesin dan pastikan port TCP/UDP 4370 terbuka (tidak ada firewall di antaranya).",
    ),
    "disabled": (
        "Mesin menampilkan \"Working...\" dan tidak menerima absen: sesi gateway (atau program lain) "
        "menonaktifkannya dan gagal mengaktifkannya lagi. Gateway mencoba lagi setiap polling.",
        "Nyalakan ulang mesin (matikan lalu hidupkan): mesin selalu mulai dalam keadaan aktif. Absen selama mesin "
        "terkunci ditolak oleh mesin, bukan hilang di gateway; minta pegawai absen ulang.",
        "Jika terus terulang, periksa koneksi jaringan ke mesin yang putus-sambung (fpgw devices, halaman status).",
    ),
    "auth_rejected": (
        "Comm key (COMM > Comm Key / sandi koneksi) di mesin berbeda dengan konfigurasi gateway.",
        "Samakan angkanya di kedua sisi (konfigurasi membacanya dari comm_key_env / comm_key_file), lalu tunggu "
        "polling berikutnya.",
    ),
    "identity_mismatch": (
        "Mesin lain menjawab di alamat ini: apakah mesin ditukar, atau DHCP memberikan IP-nya ke perangkat lain?",
        "Bandingkan nomor seri di menu mesin (System Info) dengan serial di konfigurasi gateway.",
        "Perbaiki alamat atau serial yang diharapkan di konfigurasi; absen dari mesin yang tidak dikenal tidak dibaca.",
    ),
    "protocol_error": (
        "Mesin menjawab tetapi transfer terputus: periksa kabel atau port switch yang bermasalah, atau jaringan "
        "yang membuang paket UDP.",
        "Nyalakan ulang mesin; jika berlanjut, catat model dan firmware (fpgw devices) lalu laporkan.",
    ),
    "poll_hang": (
        "Polling tidak selesai: mesin mungkin macet di tengah transfer. Nyalakan ulang mesin.",
        "Jika terus terulang, turunkan timeout_s mesin ini atau ganti transport-nya (tcp/udp) di konfigurasi.",
    ),
    "clock_reset": (
        "Jam mesin kehilangan waktunya (tahun 2000 atau tanggal mustahil): baterai cadangan RTC kemungkinan habis.",
        "Atur tanggal/jam di menu mesin (atau aktifkan health.clock_correct) dan jadwalkan penggantian baterai.",
        "Absen dengan waktu rusak tetap disimpan dan ditandai; periksa di laporan sebelum TPP dihitung.",
    ),
    "clock_skew": (
        "Jam mesin menyimpang dari server: atur di menu mesin (Date/Time) atau aktifkan health.clock_correct.",
        "Penyimpangan berulang menandakan baterai RTC lemah. Pastikan server gateway sendiri memakai NTP.",
    ),
    "storage": (
        "Memori log absen atau pengguna hampir penuh; mesin yang penuh berhenti merekam absen.",
        "Pastikan dulu di gateway (fpgw devices / halaman status) bahwa setiap rekaman sudah diunduh dan disimpan.",
        "Lalu kosongkan dengan `fpgw devices clear DEVICE` (memeriksa setiap rekaman tersimpan sebelum menghapus), "
        "atau atur polling.clear_when_full_ratio; jangan lewat menu mesin sebelum gateway menunjukkan semua "
        "rekaman tersimpan.",
    ),
    "user_drop": (
        "Mesin kehilangan banyak pengguna sekaligus: apakah di-reset ke pengaturan pabrik, diganti unit kosong, "
        "atau pengguna dihapus di mesin? Pegawai yang hilang dari mesin tidak bisa absen.",
        "Periksa di mesin (menu User Mgt) berapa pengguna yang tersimpan. `fpgw enrol status` menunjukkan cadangan "
        "terakhir; pulihkan dengan `fpgw enrol restore DEVICE --from DEVICE --dry-run`, lalu tanpa --dry-run "
        "(docs/enrolment.md). Masalah selesai sendiri bila jumlahnya kembali.",
        "Jika pengguna memang sengaja dihapus, terima jumlah baru dengan `fpgw enrol ack-drop DEVICE`.",
    ),
    "counts_unreliable": (
        "Mesin menjawab pertanyaan jumlah rekaman tanpa angka yang bisa dipakai (sebagian mesin wajah dan firmware "
        "baru): tidak ada yang hilang, gateway mengunduh seluruh log setiap polling, hanya lebih lambat.",
        "Jika sebelumnya normal, periksa versi firmware (fpgw devices) apakah baru diperbarui; menyalakan ulang "
        "mesin kadang memulihkan penghitungnya.",
    ),
    "silent": (
        "Mesin menjawab tetapi tidak ada yang absen selama jam kerja: apakah dipakai, terpasang, mode-nya benar?",
        "Coba absen sendiri: sensor sidik jari yang rusak atau layar yang macet juga terlihat seperti ini.",
        "Jika kantor tidak lagi memakai mesin ini, nonaktifkan di konfigurasi.",
    ),
    "replaced": (
        "Mesin lain (nomor seri baru) sekarang menjawab di alamat ini.",
        "Jika mesin memang diganti, perbarui serial yang diharapkan di konfigurasi; pastikan log mesin lama sudah "
        "terunduh seluruhnya.",
    ),
    "log_shrank": (
        "Jumlah rekaman di mesin berkurang: log dihapus di mesin atau mesin di-reset.",
        "Absen yang sudah disimpan gateway aman; tanyakan siapa yang menghapus. Rekaman antara polling terakhir "
        "dan penghapusan bisa hilang.",
    ),
    "firmware_changed": (
        "Versi firmware berubah (pembaruan atau papan pengganti). Perhatikan polling berikutnya untuk error protokol.",
    ),
    "clock_corrected": (
        "Gateway mengatur jam mesin (health.clock_correct). Tidak perlu tindakan kecuali sering terulang (periksa "
        "baterai RTC).",
    ),
    "database_full": (
        "Kosongkan ruang disk di server gateway (df -h pada folder database); hapus log atau cadangan lama.",
        "Di PostgreSQL: periksa disk server dan kuota database.",
        "Ini bukan kerusakan mesin absen atau jaringan: tidak perlu memeriksa kabel.",
    ),
    "database_locked": (
        "Program lain membuka database untuk menulis (alat backup, shell `sqlite3`, daemon fpgw kedua pada file yang "
        "sama): tutup program itu.",
        "Ini bukan kerusakan mesin absen atau jaringan: tidak perlu memeriksa kabel.",
    ),
    "database_unreachable": (
        "SQLite: apakah file masih ada, di disk yang terpasang dan bisa ditulis (izin folder state)?",
        "PostgreSQL: apakah server berjalan dan bisa dijangkau dari gateway (database.url)?",
        "Ini bukan kerusakan mesin absen atau jaringan: tidak perlu memeriksa kabel.",
    ),
    "disk_nearly_full": (
        "Kosongkan ruang disk di server gateway (df -h pada folder database) sebelum database penuh.",
        "Batasnya adalah health.disk_free_min_mb.",
    ),
}
