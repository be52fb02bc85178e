build-conf/obj/conf/value.o: conf/value.c conf/internal.h conf/conf.h
conf/internal.h:
conf/conf.h:
