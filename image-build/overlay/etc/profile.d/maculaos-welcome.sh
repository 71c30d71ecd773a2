# MaculaOS welcome screen (seed 4.5): fastfetch with the MaculaOS logo at an interactive login on a
# terminal. Non-interactive sessions (ssh host command, scp, scripts) print nothing here; every login
# also gets the one-line motd banner (/etc/update-motd.d/10-maculaos) through PAM.
case $- in *i*) ;; *) return 0 ;; esac
[ -t 1 ] || return 0
if [ -z "${MACULAOS_WELCOMED:-}" ] && command -v fastfetch >/dev/null 2>&1; then
	export MACULAOS_WELCOMED=1
	fastfetch 2>/dev/null
fi
