# no #! line: Vagrant runs this with bash
source /etc/os-release
[[ "$ID" == debian ]] && echo "on $PRETTY_NAME"
